"""How a backend gets onto the host: one module per install method, chosen by the install spec.

A backend module says which methods it supports and fills in their parameters (a package and
version, build flags per variant, where the binary sits); the installer for that method does
the work, the same way for every backend. To add a method (a package manager, say): write a
module with an Installer subclass (installers/base.py) and name it in INSTALLERS below.

    path     already on PATH; farmhand installs nothing and never modifies it
    pip      a venv that farmhand owns, optionally from a wheel it builds (keyed by build flags)
    archive  release archives: URL, sha256 (pinned or from the release's checksum file), safe
             extraction into a versioned directory
    external a server already running here that farmhand did not start: used, never touched
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import BadInput
from ..registry import Registry
from .base import (  # noqa: F401 - the installers' shared contract, named where callers look for it
    LIVE,
    Installer,
    InstallSpec,
    LiveTools,
    missing_tools,
    staged,
)

if TYPE_CHECKING:  # annotations only: a bundle's reader loads for `apply --bundle` alone
    from ..bundle import Bundle

# method (the class's `method`) -> "module:Installer class". A method's module is loaded the first
# time a runtime uses it: a no-op apply of a pip-installed llama-server never loads the archive
# installer's tar/zip/download machinery (registry.py).
INSTALLERS: Registry[Installer] = Registry(__name__, {
    "path": "path:PathInstaller",
    "pip": "pip:PipInstaller",
    "archive": "archive:ArchiveInstaller",
    "external": "external:ExternalInstaller",
}, key_attr="method")


def problem_of(spec: InstallSpec, tools, offline: Bundle | None = None) -> str | None:
    """Why `spec` cannot be installed on this host: the backend's own verdict on the host
    (`unsupported` in its parameters), then the install method's checks. `offline`: the bundle
    this command installs from (apply --bundle)."""
    if spec.get("unsupported"):
        return f"{spec.backend} ({spec.variant}): {spec.get('unsupported')}"
    if offline and offline.holds_install(spec.key):
        return None  # built already (and checked against this host): no toolchain needed
    return get(spec.method).problem(spec, tools)


def get(method: str) -> Installer:
    """The installer for `method`, its module loaded on first use."""
    if method not in INSTALLERS:
        raise BadInput(f"unknown install method {method!r}; known: {', '.join(sorted(INSTALLERS))}")
    return INSTALLERS[method]
