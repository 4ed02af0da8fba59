"""vLLM: `vllm serve REPO --host --port --served-model-name`, ready on GET /health.

One model per process; a model too large for one GPU is split with tensor parallelism over a
power of two of them. vLLM takes a fraction of each GPU (--gpu-memory-utilization): the
fraction the memory plan left for it, so a GPU shared with another runtime is not claimed
whole. Models are Hugging Face repos (hf://ORG/REPO), fetched by vLLM into HF_HOME under
farmhand's store. Install is pip `vllm` in its own venv; not automated yet, so a host must
have `vllm` on PATH.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from .. import sources
from ..deployment import ModelSpec
from ..paths import Paths
from .base import (
    USE_CORS,
    USE_HOST,
    USE_KEY,
    USE_PORT,
    USE_ROLES,
    Backend,
    Launch,
    ReadinessProbe,
    client_host,
)

if TYPE_CHECKING:
    from ..selection import RuntimePlan, ServedModel

MAX_GPU_UTILIZATION = 0.9


class Vllm(Backend):
    name = "vllm"
    default_port = 11541
    executable = "vllm"
    variants = ("cuda", "rocm", "cpu")
    install_methods = ("path",)
    models_per_process = 1
    split = "tensor"
    start_timeout_s = 900.0  # loading weights and compiling graphs takes minutes
    grace_s = 30.0
    default_ctx = 8192
    controlled_flags = {"--host": USE_HOST, "--port": USE_PORT, "--api-key": USE_KEY, "--allowed-origins": USE_CORS,
                        "--allow-credentials": USE_CORS, "--served-model-name": USE_ROLES,
                        "--max-model-len": "use the candidate's ctx_size",
                        "--gpu-memory-utilization": "the memory plan sets it (memory.gpu_fraction)",
                        "--tensor-parallel-size": "the memory plan sets it (gpus)"}
    controlled_env = {"VLLM_API_KEY": USE_KEY}

    def usable_sources(self, model: ModelSpec) -> list[str]:
        return [uri for uri in model.sources if sources.scheme_of(uri) == "hf" and not sources.get(uri).delivers_file(uri)]

    def repo(self, served: ServedModel) -> str:
        uri = self.usable_sources(served.model)[0]
        return uri[len("hf://"):].split("@")[0]

    def readiness_probe(self, port: int, host: str = "127.0.0.1") -> ReadinessProbe:
        return ReadinessProbe(f"http://{client_host(host)}:{port}/health")

    def launch(self, runtime: RuntimePlan, binary: str, paths: Paths) -> Launch:
        (served,) = runtime.models
        argv = [binary, "serve", self.repo(served), "--host", runtime.decl.host, "--port", str(runtime.port),
                "--served-model-name", self.model_id(served), "--max-model-len", str(served.ctx_size),
                "--allowed-origins", json.dumps(list(runtime.decl.cors_origins))]
        notes = []
        gpus = [d for d in runtime.devices if d.kind == "gpu" and d.total_bytes]
        if gpus:
            fraction = min(runtime.grantable_fraction(d) for d in gpus)
            argv += ["--gpu-memory-utilization", f"{min(fraction, MAX_GPU_UTILIZATION):.2f}"]
            notes.append(f"{served.model.name}: --gpu-memory-utilization {fraction:.2f} of each GPU (the memory plan's "
                         "share)")
        if len(runtime.devices) > 1:
            argv += ["--tensor-parallel-size", str(len(runtime.devices))]
        argv += list(runtime.decl.args)
        env = {"HF_HOME": str(paths.hf_home)} | self.visible_devices(runtime) | dict(runtime.decl.env)
        if runtime.decl.api_key_env:
            env["VLLM_API_KEY"] = "${env:" + runtime.decl.api_key_env + "}"
        return Launch(argv, env, tuple(notes))
