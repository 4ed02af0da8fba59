"""Steps for files farmhand decides: runtime specs and records, llamafarm.yaml in the project, a
directory it owns, the `farmhand` launcher.
"""

from __future__ import annotations

import os
import shlex
import stat
import sys
from pathlib import Path
from typing import Callable

from .. import llamafarm, projectfs, store
from ..errors import EnvironmentProblem
from ..fsio import atomic_write, ensure_dir
from ..paths import Paths, private_dir
from .base import Content, Context, Status, Step


class FileStep(Step):
    """A file whose whole content farmhand decides (runtime specs, the deployment record).
    The content may be computed when the step runs: runtime specs need the GGUF headers of
    models that earlier steps fetch."""

    def __init__(self, step_id: str, path_of: Callable[[Paths], Path], content: Content, mode: int = 0o600,
                 after: tuple[str, ...] = ()):
        self.id, self.path_of, self._content, self.mode, self.after = step_id, path_of, content, mode, after

    def content(self) -> str:
        return self._content() if callable(self._content) else self._content

    def check(self, ctx: Context) -> Status:
        path = self.path_of(ctx.paths)
        try:
            same = path.read_text() == self.content()
        except FileNotFoundError:
            return Status(False, f"will write {path}")
        return Status(True, str(path)) if same else Status(False, f"will update {path}")

    def apply(self, ctx: Context) -> str:
        path = self.path_of(ctx.paths)
        ensure_dir(path.parent, ctx.ledger, self.id)
        ctx.ledger.add_resource("file", path, self.id)
        try:  # what it replaces, for a step that may have to put it back (RuntimeStep's rollback)
            ctx.extra[f"previous:{self.id}"] = path.read_text()
        except (FileNotFoundError, UnicodeDecodeError):
            pass
        atomic_write(path, self.content(), self.mode)
        return f"wrote {path}"


class ConfigStep(Step):
    """llamafarm.yaml in the project directory, merged (see llamafarm.py)."""

    id = "config:llamafarm.yaml"

    def __init__(self, rendered: str, managed: list[str], default_model: str, after: tuple[str, ...] = ()):
        self.rendered, self.managed, self.default_model, self.after = rendered, managed, default_model, after

    def path(self, ctx: Context) -> Path:
        return ctx.project_dir / llamafarm.FILENAME

    def _owned(self, ctx: Context) -> tuple[set[str], str | None]:
        record = ctx.ledger.projects().get(str(self.path(ctx))) or {}
        return set(record.get("managed", [])), record.get("default_written")

    def _desired(self, ctx: Context, existing: dict) -> dict:
        managed, written = self._owned(ctx)
        desired = llamafarm.yamlio.load_text(self.rendered, "template")
        return llamafarm.merged(existing, desired, managed, written)

    def preflight(self, ctx: Context) -> None:
        if not os.access(ctx.project_dir, os.W_OK):

            raise EnvironmentProblem(f"{ctx.project_dir}: not writable, so farmhand cannot write llamafarm.yaml there "
                                     "(choose another --project-dir, or fix its owner or mode); nothing was changed")
        projectfs.check_file(self.path(ctx))  # before anything is read through a planted link
        existing = llamafarm.load_existing(self.path(ctx))  # malformed YAML stops the run here
        if existing is not None:
            llamafarm.validate(self._desired(ctx, existing), str(self.path(ctx)))

    def _lost(self, ctx: Context) -> bool:
        """farmhand's own file (exactly what it renders) that the ledger has no record of."""
        path = self.path(ctx)
        return str(path) not in ctx.ledger.projects() and path.is_file() and path.read_text() == self.rendered

    def check(self, ctx: Context) -> Status:
        path = self.path(ctx)
        existing = llamafarm.load_existing(path)
        if existing is None:
            return Status(False, f"will create {path}")
        if self._lost(ctx):
            return Status(False, f"will adopt {path} (written by farmhand; its ledger record was lost)")
        if self._desired(ctx, existing) == existing:
            return Status(True, f"{path} (roles: {', '.join(self.managed)})")
        return Status(False, f"will update runtime.models in {path} (backup kept)")

    def apply(self, ctx: Context) -> str:
        path = self.path(ctx)
        if self._lost(ctx):
            ctx.ledger.project(path).update({"created": True, "managed": list(self.managed),
                                             "default_written": self.default_model,
                                             "sha256": store.sha256_file(path)})
            return f"adopted {path}"
        managed, written = self._owned(ctx)
        record = ctx.ledger.project(path)
        if "created" not in record:
            # A file identical to what farmhand renders is farmhand's, even when the ledger that
            # said so was lost; any other existing file is the user's.
            record["created"] = not path.exists() or path.read_text() == self.rendered
        record["managed"] = sorted(set(record.get("managed", [])) | set(self.managed))
        ctx.ledger.save()  # write-ahead: destroy knows of this file before it is written
        backup = llamafarm.write_merged(path, self.rendered, managed, written)
        final = ((llamafarm.load_existing(path) or {}).get("runtime") or {}).get("default_model")
        record["managed"] = list(self.managed)
        record["default_written"] = final if final == self.default_model else written  # else the user's choice
        record["sha256"] = store.sha256_file(path)
        return f"updated {path} (backup {backup.name})" if backup else f"created {path}"


class DirStep(Step):
    """A directory farmhand owns (owner-only), recorded as `kind`: a backend's own model store
    is recorded as "model", so `destroy` keeps it unless --purge-models, like the models. One that
    is there but not farmhand's kind of directory (a link, another user's, open to others) is
    refused, never used: a runtime's scratch may live in /tmp, where anyone can plant one."""

    def __init__(self, step_id: str, path: Path, kind: str = "model"):
        self.id, self.path, self.kind = step_id, path, kind

    def _wrong(self) -> str | None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return None
        if stat.S_ISLNK(st.st_mode):
            return "is a symbolic link"
        if not stat.S_ISDIR(st.st_mode):
            return "is not a directory"
        if st.st_uid != os.geteuid():
            return f"belongs to uid {st.st_uid}, not to this user"
        if st.st_mode & 0o077:
            return f"is open to others (mode {stat.S_IMODE(st.st_mode):o})"
        return None

    def preflight(self, ctx: Context) -> None:
        wrong = self._wrong()
        if wrong:
            raise EnvironmentProblem(f"{self.path} {wrong}: farmhand will not use it; remove it (or make it yours "
                                     "and owner-only) and re-run. Nothing was changed")

    def check(self, ctx: Context) -> Status:
        wrong = self._wrong()
        if wrong:
            return Status(False, f"{self.path} {wrong}: refused")
        return Status(True, str(self.path)) if self.path.is_dir() else Status(False, f"will create {self.path}")

    def apply(self, ctx: Context) -> str:

        ensure_dir(self.path.parent, ctx.ledger, self.id)
        ctx.ledger.add_resource(self.kind, self.path, self.id)
        private_dir(self.path)
        self.preflight(ctx)  # made by someone else between the check and mkdir: still refused
        return f"created {self.path}"


LAUNCHER_MARK = "# farmhand launcher"


class LauncherStep(Step):
    """A `farmhand` command where PATH looks (~/.local/bin, /usr/local/bin with --system,
    FARMHAND_HOME/bin for a relocated home), so the next command a user types works. A file of
    that name that farmhand did not write is left alone."""

    id = "launcher:farmhand"

    def __init__(self, paths: Paths, python: str = sys.executable):
        self.file = paths.launcher
        env = f"export FARMHAND_HOME={shlex.quote(str(paths.data.parent))}\n" if paths.mode == "home" else ""
        system = "--system " if paths.mode == "system" else ""
        self.text = (f"#!/bin/sh\n{LAUNCHER_MARK}: written by `farmhand apply`, removed by `farmhand destroy`.\n"
                     f"{env}exec {shlex.quote(python)} -m supervisor {system}\"$@\"\n")
        self.fallback = f"{shlex.quote(python)} -m supervisor {system}".rstrip()

    def _foreign(self) -> bool:
        try:
            return LAUNCHER_MARK not in self.file.read_text(errors="replace")
        except FileNotFoundError:
            return False
        except OSError:
            return True

    def check(self, ctx: Context) -> Status:
        if self._foreign():
            return Status(True, f"{self.file} is not farmhand's launcher; left alone")
        try:
            same = self.file.read_text() == self.text
        except FileNotFoundError:
            return Status(False, f"will write {self.file}")
        return Status(True, str(self.file)) if same else Status(False, f"will update {self.file}")

    def apply(self, ctx: Context) -> str:
        ensure_dir(self.file.parent, ctx.ledger, self.id)
        ctx.ledger.add_resource("file", self.file, self.id)
        atomic_write(self.file, self.text, 0o755)
        return f"wrote {self.file}"

    def command(self) -> str:
        """What a user types to run farmhand after this apply."""
        if self._foreign() or not self.file.exists():
            return self.fallback
        on_path = str(self.file.parent) in os.environ.get("PATH", "").split(os.pathsep)
        return "farmhand" if on_path else shlex.quote(str(self.file))

    def path_note(self) -> str | None:
        if self._foreign() or str(self.file.parent) in os.environ.get("PATH", "").split(os.pathsep):
            return None
        return f"{self.file.parent} is not on PATH: add it (export PATH=\"{self.file.parent}:$PATH\") to type `farmhand`"
