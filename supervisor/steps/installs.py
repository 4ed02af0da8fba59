"""Steps for a backend's install: made present by its install method, and installs a newer plan
replaced removed once its runtimes answer.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .. import installers, stepids
from ..backends.base import InstallRejected
from ..errors import Unsupported
from ..fsio import file_fingerprint, fingerprint_matches
from .base import Context, Status, Step


class InstallStep(Step):
    """A backend made present by its install method (installers/); shared by the runtimes that
    use the same install spec."""

    def __init__(self, spec: installers.InstallSpec, backend):
        self.spec, self.backend = spec, backend
        self.installer = installers.get(spec.method)
        self.id = stepids.install(spec.key)

    def preflight(self, ctx: Context) -> None:
        problem = installers.problem_of(self.spec, installers.LIVE, ctx.offline)
        if problem:
            raise Unsupported(f"cannot apply: {problem}. Nothing was changed.")

    def check(self, ctx: Context) -> Status:
        binary = self.installer.binary(self.spec, ctx.paths)
        record = ctx.ledger.artifact(self.id)
        if self.installer.prefix(self.spec, ctx.paths) is None:  # on PATH or running: never ours
            return Status(*self.installer.present(self.spec))
        if record and fingerprint_matches(record, binary):
            return Status(True, f"{self.backend.name} {record.get('version') or ''} ({self.spec.variant}) at {binary}")
        if record is None and self._adoptable(ctx):
            return Status(False, f"will adopt {binary} (installed by farmhand; its ledger record was lost)")
        return Status(False, f"will {self.installer.describe(self.spec)}")

    def _adoptable(self, ctx: Context) -> bool:
        """An install in farmhand's own directory, named by this very spec's key, that runs."""
        binary = self.installer.binary(self.spec, ctx.paths)
        return binary.is_file() and os.access(binary, os.X_OK) and self.backend.version_of(binary) is not None

    def apply(self, ctx: Context) -> str:
        prefix = self.installer.prefix(self.spec, ctx.paths)
        if prefix is None:  # nothing of farmhand's to put in place: it is there, or it is an error
            binary = self.installer.install(self.spec, ctx.paths, ctx.ledger, ctx.report, ctx.offline)
            sees = self.backend.verify_install(binary, self.spec.variant) if binary else None
            return self.installer.present(self.spec)[1] + (f"; {sees}" if sees else "")
        adopt = ctx.ledger.artifact(self.id) is None and self._adoptable(ctx)
        if adopt:
            ctx.ledger.add_resource("dir", prefix, self.id)
            binary = self.installer.binary(self.spec, ctx.paths)
        else:
            binary = self.installer.install(self.spec, ctx.paths, ctx.ledger, ctx.report, ctx.offline)
        sees = self._verify(ctx, prefix, binary)
        version = self.backend.version_of(binary)
        ctx.ledger.set_artifact(self.id, file_fingerprint(binary) | {"key": self.spec.key, "version": version,
                                                                     "prefix": str(prefix), "sees": sees})
        return f"{'adopted ' if adopt else ''}{self.backend.name} {version or ''} at {binary}" + \
            (f"; {sees}" if sees else "")

    def _verify(self, ctx: Context, prefix, binary) -> str | None:
        """The backend's check that the install works here; one that does not is removed whole
        (a GPU build running on the CPU must never be recorded as the GPU backend)."""

        try:
            return self.backend.verify_install(binary, self.spec.variant)
        except InstallRejected:
            shutil.rmtree(prefix, ignore_errors=True)
            ctx.ledger.forget_resource(prefix)
            ctx.ledger.save()
            raise

    def version(self, ctx: Context) -> str | None:
        return (ctx.ledger.artifact(self.id) or {}).get("version")


class PruneStep(Step):
    """Installs the plan no longer uses (an older pinned version, a variant given up) are removed
    once the runtimes of this plan are ready: an upgrade installs beside the old version and
    drops it only after the new one answered."""

    id = "prune:installs"

    def __init__(self, keep: set[str], after: tuple[str, ...] = ()):
        self.keep, self.after = keep, after

    def _stale(self, ctx: Context) -> list[tuple[str, Path]]:
        out = []
        for key, record in ctx.ledger.data["artifacts"].items():
            if not key.startswith("install:") or key in self.keep:
                continue
            prefix = record.get("prefix") or next(
                (r["path"] for r in ctx.ledger.resources()
                 if r["step"] == key and Path(r["path"]).name == key[len("install:"):]), None)
            if prefix:
                out.append((key, Path(prefix)))
        return out

    def check(self, ctx: Context) -> Status:
        stale = self._stale(ctx)
        if not stale:
            return Status(True, "no install left over from an earlier plan")
        return Status(False, "will remove " + ", ".join(str(p) for _, p in stale) + " (replaced; the new one is ready)")

    def apply(self, ctx: Context) -> str:
        import shutil

        removed = []
        for key, prefix in self._stale(ctx):
            shutil.rmtree(prefix, ignore_errors=True)
            for r in ctx.ledger.resources():
                path = Path(r["path"])
                # Its directory and its downloads go; built wheels stay (a switch back is quick).
                download = r["step"] == key and r["kind"] == "file" and path.parent == ctx.paths.downloads
                if download:
                    path.unlink(missing_ok=True)
                if download or path == prefix or prefix in path.parents:
                    ctx.ledger.forget_resource(path)
            ctx.ledger.drop_artifact(key)
            removed.append(str(prefix))
        return "removed " + ", ".join(removed)
