"""`external`: a server of the backend that is already running here and that farmhand did not
start (a system `ollama.service`, say). farmhand installs nothing, starts and stops nothing,
and removes nothing of it; it only talks to its API. Chosen by method `auto` (selection.py),
never declared."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from ..errors import EnvironmentProblem
from ..paths import Paths
from .base import Installer, InstallSpec


class RunningServer(Protocol):
    """What this method asks of a backend: is a server of yours answering at url, and how is
    it started again. Backends register themselves (backends/__init__.py): installers sit below
    backends and never import them."""

    def running_version(self, url: str) -> str | None: ...

    def start_advice(self) -> str: ...


SERVERS: Mapping[str, RunningServer] = {}


def register(servers: Mapping[str, RunningServer]) -> None:
    """backends/__init__.py hands over its registry: backend name -> backend, loaded on first use."""
    global SERVERS
    SERVERS = servers


class ExternalInstaller(Installer):
    method = "external"

    def describe(self, spec: InstallSpec) -> str:
        return f"use the {spec.backend} already running at {spec.get('url')}"

    def prefix(self, spec: InstallSpec, paths: Paths) -> Path | None:
        return None

    def binary(self, spec: InstallSpec, paths: Paths) -> Path:
        return Path(spec.get("url"))

    def present(self, spec: InstallSpec) -> tuple[bool, str]:
        url = spec.get("url")
        server = SERVERS[spec.backend]
        version = server.running_version(url)
        if version is None:
            return False, (f"the {spec.backend} at {url} does not answer: start it again "
                           f"({server.start_advice()}), or re-run with --reselect to let farmhand "
                           "install its own")
        host = url.split("://", 1)[-1]
        return True, f"using the {spec.backend} already running at {host} (version {version}); farmhand leaves it alone"

    def install(self, spec: InstallSpec, paths: Paths, ledger, report, offline=None) -> Path:
        ok, detail = self.present(spec)
        if not ok:
            raise EnvironmentProblem(detail)
        return self.binary(spec, paths)
