"""Ollama: `ollama serve` on OLLAMA_HOST, ready when GET /api/version answers 200.

It serves many models from one process (loading and unloading them on demand) and spreads a
model over several GPUs itself. Models come from Ollama's registry (ollama://NAME:TAG, pulled
through POST /api/pull) or are GGUF files imported into its store. farmhand does not install
Ollama or pull into it yet, so a host must have `ollama` on PATH (docs/backends.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import sources
from ..deployment import ModelSpec
from ..paths import Paths
from .base import USE_CORS, USE_HOST, Backend, Launch, ReadinessProbe, client_host

if TYPE_CHECKING:
    from ..selection import RuntimePlan, ServedModel


class Ollama(Backend):
    name = "ollama"
    provider = "ollama"
    default_port = 11434
    executable = "ollama"
    variants = ("cuda", "rocm", "metal", "vulkan", "cpu")
    install_methods = ("path",)
    models_per_process = None
    split = "scheduler"
    own_store = True
    default_ctx = 4096
    supports_api_key = False
    controlled_env = {"OLLAMA_HOST": USE_HOST, "OLLAMA_ORIGINS": USE_CORS,
                      "OLLAMA_MODELS": "models live in farmhand's store"}

    def usable_sources(self, model: ModelSpec) -> list[str]:
        return [uri for uri in model.sources
                if sources.scheme_of(uri) == "ollama" or (model.is_gguf and sources.get(uri).delivers_file(uri))]

    def model_id(self, served: ServedModel) -> str:
        for uri in served.model.sources:
            if sources.scheme_of(uri) == "ollama":
                return uri[len("ollama://"):]
        return served.model.name

    def base_url(self, port: int, host: str = "127.0.0.1") -> str:
        return f"http://127.0.0.1:{port}"

    def readiness_probe(self, port: int, host: str = "127.0.0.1") -> ReadinessProbe:
        return ReadinessProbe(f"http://{client_host(host)}:{port}/api/version")

    def launch(self, runtime: RuntimePlan, binary: str, paths: Paths) -> Launch:
        env = {"OLLAMA_HOST": f"127.0.0.1:{runtime.port}", "OLLAMA_MODELS": str(paths.models / "ollama"),
               "OLLAMA_ORIGINS": ",".join(runtime.decl.cors_origins),
               # Every model the plan put here fits together, so all may stay loaded.
               "OLLAMA_MAX_LOADED_MODELS": str(len(runtime.models)),
               "OLLAMA_CONTEXT_LENGTH": str(max(m.ctx_size for m in runtime.models))}
        env |= self.visible_devices(runtime) | dict(runtime.decl.env)
        return Launch([binary, "serve", *runtime.decl.args], env)

    def pull_problem(self) -> str | None:
        return ("farmhand cannot pull or import models into Ollama yet (POST /api/pull, /api/create); "
                "pull them by hand with `ollama pull` or choose another profile")
