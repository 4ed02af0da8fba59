"""What every install method shares: the install spec, the Installer contract, staging, tool checks."""


from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..paths import Paths

if TYPE_CHECKING:  # annotations only: a bundle's reader loads for `apply --bundle` alone
    from ..bundle import Bundle

_MAPPING = "\0mapping"  # marks a frozen dict, so a list of pairs is never taken for one


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return (_MAPPING, *sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple) and value[:1] == (_MAPPING,):
        return {k: _thaw(v) for k, v in value[1:]}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class InstallSpec:
    """Everything that decides an install; two runtimes with equal specs share one install."""

    backend: str
    method: str
    variant: str
    params: tuple = ()

    @classmethod
    def make(cls, backend: str, method: str, variant: str, params: dict) -> InstallSpec:
        return cls(backend, method, variant, _freeze({k: v for k, v in params.items() if v is not None}))

    def get(self, key: str, default: Any = None) -> Any:
        return _thaw(self.params).get(key, default) if self.params else default

    def to_json(self) -> dict:
        return {"backend": self.backend, "method": self.method, "variant": self.variant,
                **(_thaw(self.params) if self.params else {})}

    @property
    def key(self) -> str:
        """A name for the install that changes whenever anything that decides it changes."""
        digest = hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:10]
        return f"{self.backend}-{self.variant}-{self.method}-{digest}"


class Installer:
    method: str = ""

    def describe(self, spec: InstallSpec) -> str:
        raise NotImplementedError

    def problem(self, spec: InstallSpec, tools: dict | None) -> str | None:
        """Why this cannot be installed here (with the exact fix), or None. `tools` is the facts'
        map of tool -> path; None means unknown (an old recording): only the live check decides."""
        return None

    def prefix(self, spec: InstallSpec, paths: Paths) -> Path | None:
        """The directory farmhand owns for this install (None: farmhand owns nothing)."""
        return paths.install_prefix(spec.backend, spec.key)

    def binary(self, spec: InstallSpec, paths: Paths) -> Path:
        """Where the executable is, or will be once installed."""
        raise NotImplementedError

    def present(self, spec: InstallSpec) -> tuple[bool, str]:
        """For methods where farmhand owns nothing (prefix None): is it there, and a line on it."""
        return False, self.describe(spec)

    def install(self, spec: InstallSpec, paths: Paths, ledger, report, offline: Bundle | None = None) -> Path:
        """Install, record what was created in the ledger, return the executable. `offline`: the
        bundle this command installs from (apply --bundle), else None: the network."""
        raise NotImplementedError


class LiveTools:
    """The tools of the machine farmhand runs on, looked up on PATH when asked (for preflight)."""

    def get(self, tool: str, default=None) -> str | None:
        return shutil.which(tool)


LIVE = LiveTools()
UNKNOWN = "unknown"


@contextlib.contextmanager
def staged(prefix: Path, ledger, step: str, kind: str = "dir"):
    """Build an install in `<prefix>.partial` (recorded first), then swap it into place whole;
    on any failure the staging directory goes and the old install, if any, stays."""
    staging = prefix.with_name(prefix.name + ".partial")
    ledger.add_resource("dir", staging, step)
    shutil.rmtree(staging, ignore_errors=True)
    try:
        yield staging
        ledger.add_resource(kind, prefix, step)
        shutil.rmtree(prefix, ignore_errors=True)
        os.replace(staging, prefix)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        ledger.forget_resource(staging)


def missing_tools(needed: list[tuple[str, str]], tools) -> str | None:
    """'missing nvcc (CUDA toolkit: ...)' for the tools in `needed` the host lacks. `tools` is
    the facts' map of tool -> path (a tool it does not name, or None for the whole map: not
    recorded, taken as present) or LIVE."""
    missing = []
    for tool, fix in needed:
        present = UNKNOWN if tools is None else tools.get(tool, UNKNOWN)
        if not present:
            missing.append((tool, fix))
    if not missing:
        return None
    fixes = "; ".join(dict.fromkeys(fix for _, fix in missing))
    return f"missing {', '.join(t for t, _ in missing)} ({fixes})"
