"""`farmhand bundle create`: plan for the target, build here, fetch, and pack everything one
offline install needs into one tar (the format and its reader: bundle.py)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, requires
from pathlib import Path

from . import __version__, cpulevel
from .bundle import REPO, ROOT, SOURCE_ITEMS, BuiltFor, Manifest
from .errors import FarmhandError, Unsupported
from .fsio import ensure_dir
from .installers import get as installer
from .installers.pip import _run
from .steps import Context, InstallStep, ModelStep, RepoStep, StoreModelStep


class _Writer:
    """Members appended to the tar as they are made; every member's sha256 kept for the manifest."""

    def __init__(self, tar: tarfile.TarFile):
        self.tar, self.members = tar, {}

    def add_file(self, path: Path, member: str) -> str:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        info = self.tar.gettarinfo(str(path), arcname=f"{ROOT}/{member}")
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
        with open(path, "rb") as fh:
            self.tar.addfile(info, fh)
        self.members[f"{ROOT}/{member}"] = digest.hexdigest()
        return f"{ROOT}/{member}"

    def add_bytes(self, data: bytes, member: str) -> None:

        info = tarfile.TarInfo(f"{ROOT}/{member}")
        info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
        self.tar.addfile(info, io.BytesIO(data))


def source_files(repo: Path = REPO) -> list[Path]:
    files = []
    for item in SOURCE_ITEMS:
        path = repo / item
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                            and not p.name.endswith(".pyc"))
    return files


def dependency_wheels(dest: Path, report, ledger=None) -> list[Path]:
    """farmhand's dependencies (and the setuptools its editable install builds with) as wheels,
    for this Python and platform, from the index pip is configured with."""
    try:  # the installed distribution's own list (pyproject.toml), without the dev extra
        needed = [r for r in requires("farmhand") or [] if "extra ==" not in r]
    except PackageNotFoundError:
        raise FarmhandError("bundle: farmhand is not installed in this Python (run ./bootstrap.py first)") from None
    report.line(f"  collecting farmhand's {len(needed)} dependencies as wheels (pip wheel)")
    # farmhand itself goes in as its source (profiles and templates live beside the package), so
    # nothing is built in the checkout; setuptools is what its editable install builds with.
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "-w", str(dest),
          *needed, "setuptools>=64"], ledger)
    return sorted(dest.glob("*.whl"))


def create(out: Path, paths, ledger, built, facts: dict, report, overrides: dict | None) -> dict:
    """Write the bundle for plan `built` (made for `facts`, this host's or a recorded one's) to `out`."""

    level_wanted = (facts.get("build") or {}).get("cpu_level")
    ctx = Context(paths, ledger, report, Path.cwd())
    installs: dict[str, dict] = {}
    models: list[ModelStep] = []
    variants = []
    for step in built.steps:
        if isinstance(step, InstallStep):
            spec = step.spec
            if spec.method not in ("pip", "archive") or (spec.method == "pip" and not spec.get("wheel_build")):
                raise Unsupported(
                    f"bundle: {spec.backend} installs by {spec.method}{'' if spec.method != 'pip' else ' (a dependency stack)'}"
                    "; bundles carry llama.cpp builds, release archives and GGUF models. For it, point hosts at a "
                    "mirror (FARMHAND_MIRROR_PYPI) instead")
            installs[spec.key] = {"spec": spec, "backend": spec.backend, "variant": spec.variant, "method": spec.method,
                                  "cpu_level": spec.get("cpu_level")}
            variants.append(spec.variant)
        elif isinstance(step, ModelStep):
            models.append(step)
        elif isinstance(step, StoreModelStep) and not step.imported:
            raise Unsupported(f"bundle: {step.id} is pulled by name from {step.backend.name}'s registry; bundles carry "
                              "model files. Give the model a file source (hf://, https://, pip://), or point hosts at a "
                              "registry mirror (mirrors.ollama)")
        elif isinstance(step, RepoStep):
            raise Unsupported(f"bundle: {step.id} is a whole Hugging Face repo (vLLM); bundles carry GGUF models. "
                              "Point hosts at a Hub mirror (FARMHAND_MIRROR_HF) instead")
    levels = {i["cpu_level"] for i in installs.values() if i["cpu_level"]}
    arch = (facts.get("os") or {}).get("arch", platform.machine())
    here = cpulevel.norm_arch(platform.machine())
    if installs and arch != here:
        raise Unsupported(f"bundle: the target is {arch} and this machine is {here}: builds and wheels are made for "
                          f"the machine that makes them; create the bundle on a {arch} machine")
    level = levels.pop() if len(levels) == 1 else (level_wanted or "")
    built_here = any(i["method"] == "pip" for i in installs.values())  # release archives pick at run time
    if level == cpulevel.NATIVE or (built_here and not level):
        raise Unsupported("bundle: its llama.cpp build would be -march=native (this CPU exactly); build for a named "
                          f"level: bundle create --cpu-level ({', '.join(lv.name for lv in cpulevel.levels_of(arch))})")
    built_for = BuiltFor(arch=arch, cpu_level=level or "none", cpu_flags=sorted(cpulevel.LEVELS[level].flags)
                         if level in cpulevel.LEVELS else [], variants=sorted(set(variants)),
                         python=f"{sys.version_info[0]}.{sys.version_info[1]}", farmhand=__version__)

    ensure_dir(paths.cache, ledger, "bundle")
    out = out.resolve()
    partial = out.with_name(out.name + ".partial")
    ledger.add_resource("file", partial, "bundle")
    ledger.save()
    with tempfile.TemporaryDirectory(prefix=".farmhand-bundle-", dir=paths.cache) as tmp:
        wheels = dependency_wheels(Path(tmp), report, ledger)
        with tarfile.open(partial, "w:", format=tarfile.PAX_FORMAT) as tar:
            w = _Writer(tar)
            # the manifest goes last: its member digests are known only then; readers look it up by name
            for path in source_files():
                w.add_file(path, f"src/{path.relative_to(REPO)}")
            for wheel in wheels:
                w.add_file(wheel, f"wheels/{wheel.name}")
            for key, entry in installs.items():
                spec = entry.pop("spec")
                report.line(f"  {key}: {installer(spec.method).describe(spec)}")
                if spec.method == "pip":
                    wheel = installer("pip").build_wheel(spec, paths, ledger, report)
                    entry["files"] = [w.add_file(wheel, f"installs/{key}/{wheel.name}")]
                else:
                    fetched = installer("archive").fetch_archives(spec, paths, ledger, report, f"bundle:{key}")
                    entry["archives"] = {a.name: a.sha256 for a, _ in fetched}
                    entry["files"] = [w.add_file(f, f"installs/{key}/{a.sha256[:16]}-{a.name}") for a, f in fetched]
            model_entries = {}
            for step in models:
                if not step.check(ctx).up_to_date:
                    step.apply(ctx)
                record = ledger.artifact(step.id)
                path = step.path(ctx)
                member = w.add_file(path, f"models/{record['sha256']}")
                model_entries[record["sha256"]] = {"name": step.model.name, "size": path.stat().st_size,
                                                   "member": member}
            manifest = Manifest(built_for, built.profile["name"], overrides, installs, model_entries, w.members,
                                created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            w.add_bytes(json.dumps(manifest.to_json(), indent=1, sort_keys=True).encode(), "manifest.json")
    os.replace(partial, out)
    ledger.forget_resource(partial)
    ledger.save()
    size = out.stat().st_size
    return {"bundle": str(out), "bytes": size, "members": len(w.members), "built_for": asdict(built_for),
            "profile": built.profile["name"], "installs": sorted(installs), "models": sorted(
                e["name"] for e in model_entries.values())}

