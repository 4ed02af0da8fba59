"""`path`: the backend is already installed (on PATH). farmhand uses it and never changes it."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import Unsupported
from ..paths import Paths
from .base import LIVE, Installer, InstallSpec, missing_tools


class PathInstaller(Installer):
    method = "path"

    def describe(self, spec: InstallSpec) -> str:
        return f"use `{spec.get('executable')}` from PATH"

    def problem(self, spec: InstallSpec, tools) -> str | None:
        exe = spec.get("executable")
        if not missing_tools([(exe, "")], tools):
            return None
        return (f"{spec.backend}: `{exe}` is not on PATH and the install method is `path`; install "
                f"{spec.backend} (docs/backends.md) or choose another install method")

    def prefix(self, spec: InstallSpec, paths: Paths) -> Path | None:
        return None

    def present(self, spec: InstallSpec) -> tuple[bool, str]:
        problem = self.problem(spec, LIVE)
        return (False, problem) if problem else (True, f"{self.binary(spec, None)} (on PATH; farmhand leaves it alone)")

    def binary(self, spec: InstallSpec, paths: Paths) -> Path:
        found = shutil.which(spec.get("executable"))
        return Path(found) if found else Path(spec.get("executable"))

    def install(self, spec: InstallSpec, paths: Paths, ledger, report, offline=None) -> Path:

        problem = self.problem(spec, None)
        if problem:
            raise Unsupported(f"cannot apply: {problem}. Nothing was changed.")
        return self.binary(spec, paths)
