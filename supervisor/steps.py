"""The idempotent steps a plan is made of. Each has a cheap check() and an apply().

check() answers "is the desired state already here?" without doing the work (no hashing,
no builds, no network); apply() does the work and records what it created in the ledger.
preflight() runs for every step before any step applies, so a plan that cannot finish
(a backend farmhand cannot install, a port held by a stranger) changes nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import config, models
from .errors import Unsupported
from .ledger import Ledger, atomic_write, ensure_dir, file_fingerprint, fingerprint_matches
from .paths import Paths


@dataclass
class Context:
    paths: Paths
    ledger: Ledger
    report: object
    project_dir: Path
    extra: dict = field(default_factory=dict)


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


class PathBinaryStep(Step):
    """A backend farmhand does not install: it must be on PATH already."""

    def __init__(self, backend):
        self.backend = backend
        self.id = f"backend:{backend.name}"

    def binary_path(self) -> str:
        return self.binary() or self.backend.executable

    def binary(self) -> str | None:
        return self.backend.find_on_path()

    def preflight(self, ctx: Context) -> None:
        if not self.binary():
            raise Unsupported(
                f"cannot apply: {self.backend.name} is not installed (`{self.backend.executable}` not on PATH) "
                f"and farmhand cannot install it yet. Install it (docs/backends.md) or choose another profile "
                f"with --profile. Nothing was changed."
            )

    def check(self, ctx: Context) -> Status:
        found = self.binary()
        if found:
            return Status(True, f"{self.backend.executable} found at {found}")
        return Status(False, f"{self.backend.executable} not on PATH (farmhand cannot install it yet)")

    def apply(self, ctx: Context) -> str:
        self.preflight(ctx)
        return "already present"


class PipBackendStep(Step):
    """A backend built from PyPI into its own venv under farmhand's prefix."""

    def __init__(self, backend, spec: dict, paths: Paths):
        self.backend, self.spec = backend, spec
        self.id = f"backend:{backend.name}"
        self.prefix = backend.prefix(paths, spec)

    def binary_path(self) -> str:
        return str(self.backend.binary_in(self.prefix))

    def binary(self) -> str | None:
        path = self.binary_path()
        return path if Path(path).exists() else None

    def preflight(self, ctx: Context) -> None:
        if self.check(ctx).up_to_date:
            return
        problem = self.backend.install_problem({"backend": {"install": self.spec, "variant": self.spec["variant"]}})
        if problem:
            raise Unsupported(f"cannot apply: {problem}. Nothing was changed.")

    def check(self, ctx: Context) -> Status:
        record = ctx.ledger.artifact(self.id)
        binary = self.binary()
        if binary and record and record.get("key") == self.spec["key"] and fingerprint_matches(record, Path(binary)):
            return Status(True, f"{self.backend.name} {record['version']} ({self.spec['variant']})")
        wheel = sorted((ctx.paths.wheelhouse / self.spec["key"]).glob("*.whl"))
        how = "install the cached build" if wheel else f"build {self.spec['package']} {self.spec['version']} (minutes)"
        return Status(False, f"will {how} into {self.prefix}")

    def apply(self, ctx: Context) -> str:
        paths, ledger = ctx.paths, ctx.ledger
        if "FARMHAND_WHEELHOUSE" not in os.environ:
            ensure_dir(paths.wheelhouse, ledger, self.id)
        wheel = self.backend.build_wheel(self.spec, paths.wheelhouse, ctx.report)
        ensure_dir(self.prefix.parent, ledger, self.id)
        staging = self.prefix.with_name(self.prefix.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(self.prefix, ignore_errors=True)
        try:
            _run([sys.executable, "-m", "venv", "--without-pip", str(staging / "venv")])
            _run([sys.executable, "-m", "pip", "--python", str(staging / "venv" / "bin" / "python"), "install",
                  "--quiet", "--no-deps", "--no-index", "--disable-pip-version-check", str(wheel)])
            os.replace(staging, self.prefix)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        ledger.add_resource("venv", self.prefix, self.id)
        binary = Path(self.binary() or "")
        version = self.backend.version_of(binary)
        ledger.set_artifact(self.id, file_fingerprint(binary) | {"key": self.spec["key"], "version": version})
        return f"installed {self.backend.name} {version} at {binary}"


def _run(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        from .errors import FarmhandError

        raise FarmhandError(f"{' '.join(argv[:4])} ... failed (exit {proc.returncode}): {proc.stderr.strip()[-400:]}")


class ModelStep(Step):
    """A model file in farmhand's store, fetched from its sources and verified."""

    def __init__(self, model: dict):
        self.model = model
        self.id = f"model:{model['name']}"

    def path(self, ctx: Context) -> Path:
        return models.store_path(ctx.paths.models, self.model)

    def check(self, ctx: Context) -> Status:
        record = ctx.ledger.artifact(self.id)
        if models.in_store(ctx.paths.models, self.model, record):
            return Status(True, f"{self.path(ctx)} (sha256 {record['sha256'][:12]}…, verified {record.get('source', '')})")
        if self.path(ctx).exists():
            return Status(False, f"{self.path(ctx)} changed since it was verified: will verify again")
        return Status(False, f"will fetch {self.model['size_bytes'] / 1e6:.0f} MB from {self.model['sources'][0]}")

    def apply(self, ctx: Context) -> str:
        ensure_dir(ctx.paths.models, ctx.ledger, self.id)
        path = self.path(ctx)
        if path.exists():
            # Present but unverified (ledger lost or file touched): verify in place, keep if good.
            try:
                digest = models.sha256_file(path)
                if not self.model.get("sha256") or digest == self.model["sha256"]:
                    ctx.ledger.set_artifact(self.id, file_fingerprint(path) | {"sha256": digest, "source": "store"})
                    ctx.ledger.add_resource("model", path, self.id)
                    return f"verified {path}"
            except OSError:
                pass
        record = models.fetch(self.model, ctx.paths.models, ctx.report)
        ctx.ledger.add_resource("model", path, self.id)
        ctx.ledger.set_artifact(self.id, record)
        return f"fetched {self.model['name']} from {record['source']} (sha256 {record['sha256'][:12]}…)"


class FileStep(Step):
    """A file whose whole content farmhand decides (the supervisor's runtime specs)."""

    def __init__(self, step_id: str, path_of, content: str, mode: int = 0o600, after: tuple[str, ...] = ()):
        self.id, self.path_of, self.content, self.mode, self.after = step_id, path_of, content, mode, after

    def check(self, ctx: Context) -> Status:
        path = self.path_of(ctx.paths)
        try:
            same = path.read_text() == self.content
        except FileNotFoundError:
            return Status(False, f"will write {path}")
        return Status(True, str(path)) if same else Status(False, f"will update {path}")

    def apply(self, ctx: Context) -> str:
        path = self.path_of(ctx.paths)
        ensure_dir(path.parent, ctx.ledger, self.id)
        atomic_write(path, self.content, self.mode)
        ctx.ledger.add_resource("file", path, self.id)
        return f"wrote {path}"


class ConfigStep(Step):
    """llamafarm.yaml in the project directory, merged (see config.py)."""

    id = "config:llamafarm.yaml"

    def __init__(self, rendered: str, managed: list[str], after: tuple[str, ...] = ()):
        self.rendered, self.managed, self.after = rendered, managed, after

    def path(self, ctx: Context) -> Path:
        return ctx.project_dir / config.FILENAME

    def _previously_managed(self, ctx: Context) -> set[str]:
        return set(ctx.ledger.data["config"].get("managed", []))

    def preflight(self, ctx: Context) -> None:
        existing = config.load_existing(self.path(ctx))  # malformed YAML stops the run here
        if existing is not None:
            desired = config.yamlio.load_text(self.rendered, "template")
            config.validate(config.merged(existing, desired, self._previously_managed(ctx)), str(self.path(ctx)))

    def check(self, ctx: Context) -> Status:
        path = self.path(ctx)
        existing = config.load_existing(path)
        if existing is None:
            return Status(False, f"will create {path}")
        desired = config.yamlio.load_text(self.rendered, "template")
        if config.merged(existing, desired, self._previously_managed(ctx)) == existing:
            return Status(True, f"{path} (runtime: {', '.join(self.managed)})")
        return Status(False, f"will update runtime.models in {path} (backup kept)")

    def apply(self, ctx: Context) -> str:
        path = self.path(ctx)
        existed = path.exists()
        backup = config.write_merged(path, self.rendered, self._previously_managed(ctx))
        cfg = ctx.ledger.data["config"]
        if cfg.get("path") != str(path):
            cfg.clear()
            cfg.update({"path": str(path), "created": not existed})
        cfg["managed"] = list(self.managed)
        cfg["sha256"] = models.sha256_file(path)
        return f"updated {path} (backup {backup.name})" if backup else f"created {path}"


class RuntimeStep(Step):
    """The supervisor runs the rendered specs and every runtime answers its readiness probe."""

    id = "runtime:up"

    def __init__(self, specs: dict, after: tuple[str, ...] = ()):
        self.specs, self.after = specs, after

    def preflight(self, ctx: Context) -> None:
        from . import ports

        for runtime in self.specs["runtimes"]:
            ports.ensure_free_or_ours(runtime["port"], ctx.paths, runtime["name"])

    def check(self, ctx: Context) -> Status:
        from . import client

        health = client.health(ctx.paths)
        want = self.specs["digest"]
        if health is None:
            return Status(False, "will start the supervisor and its runtimes")
        if health.get("spec_digest") != want:
            return Status(False, "will restart the supervisor with the new runtime specs")
        states = {r["name"]: r["state"] for r in health.get("runtimes", [])}
        if all(s == "ready" for s in states.values()) and states:
            return Status(True, ", ".join(f"{n} ready on :{r['port']}" for n, r in
                                          ((r["name"], r) for r in health["runtimes"])))
        return Status(False, "will restart: " + ", ".join(f"{n} {s}" for n, s in states.items()))

    def apply(self, ctx: Context) -> str:
        from . import client

        health = client.health(ctx.paths)
        if health is not None:
            client.down(ctx.paths, ctx.report)
        result = client.up(ctx.paths, ctx.report)
        return ", ".join(f"{r['name']} ready on :{r['port']} in {r.get('ready_after_s', 0):.2f}s"
                         for r in result["runtimes"])


def spec_digest(specs: dict) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(specs, sort_keys=True).encode()).hexdigest()[:16]
