"""The idempotent steps a plan is made of. Each has a cheap check() and an apply().

check() answers "is the desired state already here?" without doing the work (no hashing,
no builds, no downloads; the steps that put models into a running backend or restart the
supervisor ask it over loopback, nothing beyond this machine); apply() does the work and records what it created in the ledger.
preflight() runs for every step that will change before any step applies, so a plan that
cannot finish (a backend that cannot be installed, a port held by a stranger) changes nothing.
"""

from __future__ import annotations

from .base import Content, Context, Status, Step
from .files import LAUNCHER_MARK, ConfigStep, DirStep, FileStep, LauncherStep
from .installs import InstallStep, PruneStep
from .models import LoadStep, ModelStep, RepoStep, StoreModelStep
from .runtime import RuntimeStep

__all__ = ["Context", "Status", "Step", "Content", "InstallStep", "PruneStep", "ModelStep", "RepoStep", "StoreModelStep", "LoadStep", "FileStep", "ConfigStep", "DirStep", "LAUNCHER_MARK", "LauncherStep", "RuntimeStep"]
