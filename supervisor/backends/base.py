"""What every backend module provides: one place for each fact about a backend.

A backend knows its default port, how it is started on a port (argv + env), its readiness
probe, how it stops, which LlamaFarm provider speaks to it, how it is installed, and where
its binary lives. The plan, the config writer and the supervisor only ask these questions.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from ..paths import Paths


@dataclass(frozen=True)
class ReadinessProbe:
    """HTTP GET `url` answering `expect` means ready (503 and refused connections mean not yet)."""

    url: str
    expect: int = 200


@dataclass
class Launch:
    argv: list[str]
    env: dict[str, str]


class Backend:
    name: str = ""
    provider: str = "openai"  # LlamaFarm provider that talks to this backend
    default_port: int = 0
    stop_signal: str = "SIGTERM"
    grace_s: float = 10.0
    start_timeout_s: float = 120.0
    executable: str = ""
    # Model store: "file" backends serve a file from farmhand's store; "self" backends pull into
    # their own store through their API (Ollama, Lemonade) or cache (vLLM).
    model_store: str = "file"

    def host(self) -> str:
        return "127.0.0.1"

    def base_url(self, port: int) -> str:
        """What llamafarm.yaml's base_url says for a model served on `port`."""
        return f"http://127.0.0.1:{port}/v1"

    def readiness_probe(self, port: int) -> ReadinessProbe:
        raise NotImplementedError

    def launch(self, binary: str, port: int, model: dict, model_path: Path | None, profile: dict,
               paths: Paths) -> Launch:
        raise NotImplementedError

    def model_id(self, model: dict) -> str:
        """The model name clients send (the `model` field in llamafarm.yaml)."""
        return model["name"]

    # --- installation -----------------------------------------------------------------------

    def find_on_path(self) -> str | None:
        return shutil.which(self.executable) if self.executable else None

    def install_problem(self, profile: dict) -> str | None:
        """Why apply cannot install this backend here, or None when it can."""
        method = profile["backend"].get("install", {}).get("method", "path")
        if method == "path":
            return None if self.find_on_path() else (
                f"{self.name}: `{self.executable}` is not on PATH and farmhand cannot install it yet; "
                f"install {self.name} (see docs/backends.md) and re-run"
            )
        return f"{self.name}: install method {method!r} is not implemented yet"

    def install_step(self, profile: dict, paths: Paths, ledger):
        """The Step that makes this backend present; default: it must already be on PATH."""
        from ..steps import PathBinaryStep

        return PathBinaryStep(self)
