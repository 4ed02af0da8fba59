"""Lemonade (AMD Ryzen AI NPU / Radeon): `lemonade-server serve --port P`, health under /api/v1.

LlamaFarm assigns it port 11534. Not installable by farmhand yet: `lemonade-server` must be on
PATH (docs/backends.md).
"""

from __future__ import annotations

from pathlib import Path

from ..paths import Paths
from .base import Backend, Launch, ReadinessProbe


class Lemonade(Backend):
    name = "lemonade"
    provider = "lemonade"
    default_port = 11534
    executable = "lemonade-server"
    model_store = "self"

    def base_url(self, port: int) -> str:
        return f"http://127.0.0.1:{port}/api/v1"

    def readiness_probe(self, port: int) -> ReadinessProbe:
        return ReadinessProbe(f"http://127.0.0.1:{port}/api/v1/health")

    def launch(self, binary: str, port: int, model: dict, model_path: Path | None, profile: dict,
               paths: Paths) -> Launch:
        return Launch([binary, "serve", "--port", str(port), *profile["backend"].get("args", [])],
                      dict(profile["backend"].get("env", {})))
