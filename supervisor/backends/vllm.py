"""vLLM: `vllm serve MODEL --host --port --served-model-name`, ready on GET /health.

Install is pip `vllm` in its own venv (several GB of CUDA wheels); not automated yet, so a
host must have `vllm` on PATH. Models come from Hugging Face via huggingface_hub.
"""

from __future__ import annotations

from pathlib import Path

from ..paths import Paths
from .base import Backend, Launch, ReadinessProbe


class Vllm(Backend):
    name = "vllm"
    default_port = 11541
    executable = "vllm"
    model_store = "self"
    start_timeout_s = 900.0  # loading weights and compiling graphs takes minutes
    grace_s = 30.0

    def readiness_probe(self, port: int) -> ReadinessProbe:
        return ReadinessProbe(f"http://127.0.0.1:{port}/health")

    def launch(self, binary: str, port: int, model: dict, model_path: Path | None, profile: dict,
               paths: Paths) -> Launch:
        repo = next((s[len("hf://"):] for s in model["sources"] if s.startswith("hf://")), model["name"])
        argv = [binary, "serve", repo, "--host", "127.0.0.1", "--port", str(port),
                "--served-model-name", model["name"], *profile["backend"].get("args", [])]
        env = {"HF_HOME": str(paths.models / "huggingface")} | profile["backend"].get("env", {})
        return Launch(argv, env)
