"""The idempotent steps a plan is made of. Each has a cheap check() and an apply().

check() answers "is the desired state already here?" without doing the work (no hashing,
no builds, no downloads; the steps that put models into a running backend or restart the
supervisor ask it over loopback, nothing beyond this machine); apply() does the work and records what it created in the ledger.
preflight() runs for every step that will change before any step applies, so a plan that
cannot finish (a backend that cannot be installed, a port held by a stranger) changes nothing.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Union

from . import client, installers, llamafarm, portowners, ports, projectfs, sources, stepids, store
from .backends.base import InstallRejected, NotAnswering
from .bundle import Bundle
from .deployment import ModelSpec
from .errors import EnvironmentProblem, FarmhandError, Unsupported
from .fsio import atomic_write, ensure_dir, file_fingerprint, fingerprint_matches
from .ledger import Ledger
from .paths import Paths, private_dir
from .refs import env_refs
from .sources import SourceFailed, hf


@dataclass
class Context:
    paths: Paths
    ledger: Ledger
    report: object
    project_dir: Path
    extra: dict = field(default_factory=dict)
    offline: Bundle | None = None  # the bundle this apply installs from (--bundle): no network, no build


@dataclass
class Status:
    up_to_date: bool
    detail: str


class Step:
    id: str = ""
    after: tuple[str, ...] = ()

    def preflight(self, ctx: Context) -> None:
        """Raise a FarmhandError when this step could not be applied here."""

    def check(self, ctx: Context) -> Status:
        raise NotImplementedError

    def apply(self, ctx: Context) -> str:
        raise NotImplementedError


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


class ModelStep(Step):
    """A model file in farmhand's store, fetched from its sources and verified."""

    def __init__(self, model: ModelSpec):
        self.model = model
        self.id = stepids.model(model.name)

    def path(self, ctx: Context) -> Path:
        return store.store_path(ctx.paths.models, self.model)

    def preflight(self, ctx: Context) -> None:
        """Cheap refusals before anything is written: a local file that is not the model it
        claims to be, or a disk without room for it."""
        store.preflight(self.model, ctx.paths.models)

    def check(self, ctx: Context) -> Status:
        record = ctx.ledger.artifact(self.id)
        if store.in_store(ctx.paths.models, self.model, record):
            return Status(True, f"{self.path(ctx)} (sha256 {record['sha256'][:12]}…, verified {record.get('source', '')})")
        if self.path(ctx).exists():
            return Status(False, f"{self.path(ctx)} changed since it was verified: will verify again")

        offline = ctx.offline
        if offline and offline.model_member(self.model.sha256):
            return Status(False, f"will copy {self.model.size_bytes / 1e6:.0f} MB from {offline.path.name}")
        first = (store.file_sources(self.model) or [None])[0]
        where = sources.get(first).describe(first) if first else "no source"
        return Status(False, f"will fetch {self.model.size_bytes / 1e6:.0f} MB from {where}")

    def apply(self, ctx: Context) -> str:
        ensure_dir(ctx.paths.models, ctx.ledger, self.id)
        path = self.path(ctx)
        ctx.ledger.add_resource("file", path.with_name(path.name + ".partial"), self.id)
        ctx.ledger.add_resource("model", path, self.id)
        if path.exists():
            # Present but unverified (ledger lost or file touched): verify in place, keep if good.
            try:
                digest = store.sha256_file(path)
                if not self.model.sha256 or digest == self.model.sha256:
                    ctx.ledger.set_artifact(self.id, file_fingerprint(path) | {"sha256": digest, "source": "store"})
                    return f"verified {path}"
            except OSError:
                pass
        record = store.fetch(self.model, ctx.paths.models, ctx.report, ctx.ledger, ctx.offline)
        ctx.ledger.set_artifact(self.id, record)
        return f"fetched {self.model.name} from {record['source']} (sha256 {record['sha256'][:12]}…)"


Content = Union[str, Callable[[], str]]


class RepoStep(Step):
    """A whole Hugging Face repo (what vLLM serves) in the Hub cache under farmhand's store, which
    the backend then reads offline (HF_HUB_OFFLINE=1): fetched once, by farmhand, with the token
    from the environment; a re-run makes no network call."""

    def __init__(self, name: str, source: str):
        self.name, self.source = name, source
        self.id = stepids.model(name)

    def _dir(self, ctx: Context) -> Path:

        return hf.repo_cache_dir(ctx.paths.hf_home, hf.parse(self.source).repo)

    def check(self, ctx: Context) -> Status:
        record = ctx.ledger.artifact(self.id) or {}
        repo_dir = self._dir(ctx)
        snapshot = repo_dir / "snapshots" / str(record.get("revision"))
        if record.get("source") == self.source and snapshot.is_dir():
            return Status(True, f"{self.source} at {record['revision'][:12]} in {repo_dir}")
        return Status(False, f"will download {self.source} into {repo_dir}")

    def apply(self, ctx: Context) -> str:

        ensure_dir(ctx.paths.hf_home, ctx.ledger, self.id)
        repo_dir = self._dir(ctx)
        ctx.ledger.add_resource("model", repo_dir, self.id)
        try:
            repo_dir = hf.fetch_repo(self.source, ctx.paths.hf_home, ctx.report)
        except SourceFailed as exc:

            raise EnvironmentProblem(f"{self.name}: {exc}") from None
        record = hf.repo_record(repo_dir, self.source)
        ctx.ledger.set_artifact(self.id, record)
        revision, size = record["revision"], record["size"]
        return f"{self.source} at {revision[:12]} ({size / 1e6:.0f} MB) in {repo_dir}"


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
    is recorded as "model", so `destroy` keeps it unless --purge-models, like the models."""

    def __init__(self, step_id: str, path: Path, kind: str = "model"):
        self.id, self.path, self.kind = step_id, path, kind

    def check(self, ctx: Context) -> Status:
        return Status(True, str(self.path)) if self.path.is_dir() else Status(False, f"will create {self.path}")

    def apply(self, ctx: Context) -> str:

        ensure_dir(self.path.parent, ctx.ledger, self.id)
        ctx.ledger.add_resource(self.kind, self.path, self.id)
        private_dir(self.path)
        return f"created {self.path}"


class StoreModelStep(Step):
    """A model in the store of a backend that keeps its own (Ollama), put there through its API
    once the server answers: pulled by name, or imported from farmhand's store (after the
    model:<name> step fetched and verified the file)."""

    def __init__(self, runtime, served, served_now: Callable[[], object], warm: bool = False):
        """`served_now()`: the model as the runtime is launched with it (its header once fetched)."""
        self.runtime, self.served, self.served_now, self.warm = runtime, served, served_now, warm
        self.backend = runtime.backend
        self.name = self.backend.model_id(served)
        self.imported = served.via_store
        self.id = stepids.into_backend(self.imported, runtime.name, served.model.name)
        self.after = (stepids.RUNTIME_UP,) + ((stepids.model(served.model.name),) if self.imported else ())

    def _store(self):
        return self.backend.model_store(self.runtime.url)

    def check(self, ctx: Context) -> Status:

        verb = "import" if self.imported else "pull"
        try:
            held = self._store().present()
        except NotAnswering:
            return Status(False, f"will {verb} {self.name} once {self.runtime.name} answers")
        if self.name not in held:
            return Status(False, f"will {verb} {self.name} into {self.runtime.name}")
        record = ctx.ledger.artifact(self.id)
        if self.imported and (record or {}).get("digest") != held[self.name]:
            why = "it changed since farmhand imported it" if record else "farmhand has no record of importing it"
            return Status(False, f"will import {self.name} again ({why})")
        return Status(True, f"{self.name} in {self.runtime.name}'s store")

    def apply(self, ctx: Context) -> str:
        store_ = self._store()
        if self.imported:
            path = store.store_path(ctx.paths.models, self.served.model)
            digest = (ctx.ledger.artifact(stepids.model(self.served.model.name)) or {}).get("sha256") \
                or store.sha256_file(path)
            detail = store_.import_file(self.served_now(), path, digest, ctx.report)
        else:
            detail = store_.pull(self.served_now(), ctx.report)
        held = store_.present()
        if self.name not in held:

            raise FarmhandError(f"{self.runtime.name}: {self.name} is not in its store after: {detail}")
        ctx.ledger.set_artifact(self.id, {"name": self.name, "digest": held[self.name]})
        if self.warm:  # a server farmhand does not run: load once, its own keep-alive decides after
            store_.load(self.name)
            detail += "; loaded"
        return detail


class LoadStep(Step):
    """The default model loaded in a runtime farmhand runs (it then stays: OLLAMA_KEEP_ALIVE=-1),
    so the first request does not pay the load; again after the runtime restarted."""

    def __init__(self, runtime, name: str, after: tuple[str, ...] = ()):
        self.runtime, self.name, self.after = runtime, name, after
        self.id = stepids.load(runtime.name, name)

    def check(self, ctx: Context) -> Status:

        try:
            loaded = self.runtime.backend.model_store(self.runtime.url).loaded()
        except NotAnswering:
            return Status(False, f"will load {self.name} once {self.runtime.name} answers")
        if self.name in loaded:
            return Status(True, f"{self.name} loaded in {self.runtime.name}")
        return Status(False, f"will load {self.name} into memory (so the first request does not wait for it)")

    def apply(self, ctx: Context) -> str:
        import time

        t0 = time.monotonic()
        self.runtime.backend.model_store(self.runtime.url).load(self.name)
        return f"loaded {self.name} in {time.monotonic() - t0:.1f}s"


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


class RuntimeStep(Step):
    """The supervisor runs the rendered specs and every runtime answers its readiness probe."""

    id = stepids.RUNTIME_UP

    def __init__(self, spec_of: Callable[[], object], port_sources: dict[str, str], after: tuple[str, ...] = ()):
        self.spec_of, self.port_sources, self.after = spec_of, port_sources, after

    def preflight(self, ctx: Context) -> None:

        spec = self.spec_of()
        for runtime in spec.runtimes:
            for _name, value in runtime.env:
                for var in env_refs(value):
                    if not os.environ.get(var):
                        raise EnvironmentProblem(
                            f"{var} is not set (or empty): refusing to start {runtime.name} without its API key; "
                            f"export {var}=... and re-run (nothing was changed)")
        for runtime in spec.runtimes:
            portowners.ensure_free_or_ours(runtime.port, ctx.paths, runtime.name, self.port_sources.get(runtime.name, ""))
        if spec.port:
            portowners.ensure_free_or_ours(spec.port, ctx.paths, "the supervisor's /health",
                                      self.port_sources.get(ports.SUPERVISOR, ""))

    def check(self, ctx: Context) -> Status:

        health = client.health(ctx.paths)
        if not self.spec_of().runtimes:  # every runtime is a server farmhand only uses
            if health is None:
                return Status(True, "nothing for farmhand's supervisor to run")
            return Status(False, "will stop the supervisor: no runtime left for it to run")
        if health is None:
            return Status(False, "will start the supervisor and its runtimes")
        if health.get("spec_digest") != self.spec_of().digest:
            return Status(False, "will restart the supervisor with the new runtime specs")
        states = {r["name"]: r["state"] for r in health.get("runtimes", [])}
        if states and all(s == "ready" for s in states.values()):
            return Status(True, ", ".join(f"{r['name']} ready on :{r['port']}" for r in health["runtimes"]))
        return Status(False, "will restart: " + ", ".join(f"{n} {s}" for n, s in states.items()))

    def apply(self, ctx: Context) -> str:

        health = client.health(ctx.paths)
        was_ready = health is not None and all(r["state"] == "ready" for r in health.get("runtimes", []))
        if health is not None:
            client.down(ctx.paths, ctx.report)
        if not self.spec_of().runtimes:
            return "stopped the supervisor: no runtime left for it to run"
        try:
            result = client.up(ctx.paths, ctx.report)
        except FarmhandError as exc:
            previous = ctx.extra.get("previous:spec:runtimes.json")
            if not (was_ready and previous):
                raise
            # An upgrade that does not come up must not leave the host without what it served:
            # the runtimes that were ready run again (their installs are only pruned after this).
            client.down(ctx.paths, ctx.report)
            atomic_write(ctx.paths.runtimes, previous, 0o600)
            back = client.up(ctx.paths, ctx.report)
            running = ", ".join(f"{r['name']} on :{r['port']}" for r in back["runtimes"])
            raise FarmhandError(f"rolled back: the new runtimes did not come up, the ones that ran before run again "
                                f"({running}); fix the cause and apply again. {exc}", exc.exit_code) from None
        return ", ".join(f"{r['name']} ready on :{r['port']} in {r.get('ready_after_s') or 0:.2f}s"
                         for r in result["runtimes"])


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
