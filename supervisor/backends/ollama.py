"""Ollama: `ollama serve` on OLLAMA_HOST, ready when GET /api/version answers 200.

Install is the release archive (ollama-linux-{amd64,arm64}[-rocm].tgz); farmhand does not
fetch it yet, so a host must have `ollama` on PATH (docs/backends.md). Models are pulled into
Ollama's own store through POST /api/pull.
"""

from __future__ import annotations

from pathlib import Path

from ..paths import Paths
from .base import Backend, Launch, ReadinessProbe


class Ollama(Backend):
    name = "ollama"
    provider = "ollama"
    default_port = 11434
    executable = "ollama"
    model_store = "self"

    def base_url(self, port: int) -> str:
        return f"http://127.0.0.1:{port}"

    def readiness_probe(self, port: int) -> ReadinessProbe:
        return ReadinessProbe(f"http://127.0.0.1:{port}/api/version")

    def launch(self, binary: str, port: int, model: dict, model_path: Path | None, profile: dict,
               paths: Paths) -> Launch:
        env = {"OLLAMA_HOST": f"127.0.0.1:{port}", "OLLAMA_MODELS": str(paths.models / "ollama")}
        env |= profile["backend"].get("env", {})
        return Launch([binary, "serve"], env)

    def model_id(self, model: dict) -> str:
        for source in model["sources"]:
            if source.startswith("ollama://"):
                return source[len("ollama://"):]
        return model["name"]
