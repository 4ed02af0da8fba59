"""Steps for models: a file in farmhand's store, a whole Hugging Face repo in its Hub cache, and a
model pulled, imported or loaded into a backend's own store once it answers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .. import sources, stepids, store
from ..backends.base import NotAnswering
from ..deployment import ModelSpec
from ..errors import EnvironmentProblem, FarmhandError
from ..fsio import ensure_dir, file_fingerprint
from ..sources import SourceFailed, hf
from .base import Context, Status, Step


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
