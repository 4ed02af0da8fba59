"""Lemonade (AMD Ryzen AI NPU / Radeon): `lemonade-server serve --port P`, health under /api/v1.

LlamaFarm assigns it port 11534. It serves several models and pulls them into its own store.
Not installable by farmhand yet: `lemonade-server` must be on PATH (docs/backends.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import sources
from ..deployment import ModelSpec
from ..paths import Paths
from .base import USE_HOST, USE_PORT, Backend, Launch, ReadinessProbe, client_host

if TYPE_CHECKING:
    from ..selection import RuntimePlan


class Lemonade(Backend):
    name = "lemonade"
    provider = "lemonade"
    default_port = 11534
    executable = "lemonade-server"
    variants = ("npu", "vulkan", "rocm", "cpu")
    install_methods = ("path",)
    models_per_process = None
    own_store = True
    supports_api_key = False
    controlled_flags = {"--host": USE_HOST, "--port": USE_PORT}

    def usable_sources(self, model: ModelSpec) -> list[str]:
        return [uri for uri in model.sources if sources.scheme_of(uri) == "hf"
                or (model.is_gguf and sources.get(uri).delivers_file(uri))]

    def base_url(self, port: int, host: str = "127.0.0.1") -> str:
        return f"http://127.0.0.1:{port}/api/v1"

    def readiness_probe(self, port: int, host: str = "127.0.0.1") -> ReadinessProbe:
        return ReadinessProbe(f"http://{client_host(host)}:{port}/api/v1/health")

    def launch(self, runtime: RuntimePlan, binary: str, paths: Paths) -> Launch:
        return Launch([binary, "serve", "--port", str(runtime.port), *runtime.decl.args], dict(runtime.decl.env))

    def pull_problem(self) -> str | None:
        return ("farmhand cannot pull models into Lemonade yet; pull them with `lemonade-server pull` "
                "or choose another profile")
