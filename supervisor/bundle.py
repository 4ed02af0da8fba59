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
for. The bundle an `apply --bundle` installs from is handed to the store and the installers:
models are copied out of it (hashed in the same pass), built wheels are taken from it, and a
missing build is an error, never a compile.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import cpulevel
from .errors import BadInput, EnvironmentProblem, FarmhandError, VerificationFailed

FORMAT = 1
ROOT = "farmhand-bundle"
MANIFEST = f"{ROOT}/manifest.json"
REPO = Path(__file__).resolve().parent.parent
# farmhand's own files a host needs (bootstrap.py installs from them); tests, docs and bench stay home.
SOURCE_ITEMS = ("bootstrap.py", "pyproject.toml", "Makefile", "README.md", "supervisor", "profiles", "templates")
VARIANT_VENDORS = {"cuda": ("nvidia",), "rocm": ("amd",), "metal": ("apple",), "vulkan": None, "npu": None, "cpu": ()}


@dataclass
class BuiltFor:
    """The host a bundle was built for: architecture, CPU level, GPU variants, Python, farmhand."""

    arch: str
    cpu_level: str
    cpu_flags: list[str]  # what the level assumes: the host must list every one
    variants: list[str]
    python: str  # major.minor of the wheels
    farmhand: str


@dataclass
class Manifest:
    """A bundle's manifest.json: what it was built for, the plan inputs, every member's sha256."""

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
        if not info.isfile() or info.sparse:  # a link in a bundle could point anywhere on this host
            raise VerificationFailed(f"{self.path}: {member} is not a regular file (a link or a device); the bundle "
                                     "is damaged or tampered with; make it again with `farmhand bundle create`")
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
            raise VerificationFailed(f"{self.path}: {member} has sha256 {digest.hexdigest()}, the manifest says "
                                     f"{want}: the bundle is damaged; copy it again")
        os.chmod(partial, 0o600)
        os.replace(partial, dest)
        return dest

    def install_files(self, key: str) -> list[str]:
        return list(self.manifest.installs[key]["files"])

    def missing_build(self, key: str, backend: str, variant: str) -> EnvironmentProblem:
        """The error for a plan that needs a build this bundle does not hold (a bundle never compiles)."""
        held = ", ".join(f"{i['backend']} ({i['variant']}, {i.get('cpu_level') or '-'})"
                         for i in self.manifest.installs.values()) or "no backend build"
        return EnvironmentProblem(
            f"the plan needs {backend} ({variant}) as install {key}, and bundle {self.path} holds {held}: "
            "a bundle installs without building. Create a bundle for this host (farmhand bundle create OUT --replay "
            "<a `farmhand detect --record` of it>), or run without --bundle to build here")

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
