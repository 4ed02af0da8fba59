"""The model store: fetch a model from the first source that works, verify it, keep it.

Every fetch lands in a `.partial` file beside its final name; only a file whose size, sha256
and (for GGUF) magic check out takes the final name. A mismatch deletes the partial file and
names both digests. The ledger keeps a fingerprint of each verified file so a re-run trusts
it without re-hashing. Which sources exist and how they deliver is sources/'s business.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from . import fetcher, sources, statefiles
from .deployment import ModelSpec
from .errors import EnvironmentProblem, FarmhandError, VerificationFailed
from .fetcher import sha256_file as digest
from .fsio import file_fingerprint, fingerprint_matches
from .paths import private_dir
from .sources.file import local_path, not_regular

if TYPE_CHECKING:  # annotations only: a bundle's reader loads for `apply --bundle` alone
    from .bundle import Bundle

GGUF_MAGIC = b"GGUF"
CHUNK = 1 << 20


def model_format(head: bytes) -> str | None:
    """The model file format these first bytes announce, or None."""
    if head[:4] == GGUF_MAGIC:
        return "gguf"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 1 << 30:
        return "safetensors"
    if head[:4] == b"PK\x03\x04":
        return "zip (PyTorch)"
    return None


def check_local_source(uri: str, model: ModelSpec) -> None:
    """Before copying a local file: it must be the declared size and, without a sha256 to check
    it against, a model format. Anything else (a key, /etc/shadow) is never read into the store."""

    path = local_path(uri)
    why = not_regular(path)
    if why:  # opened below: a FIFO would block the read forever
        raise sources.SourceFailed(why)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise sources.SourceFailed(f"{path}: {exc.strerror}") from None
    if model.size_bytes and size != model.size_bytes:
        raise VerificationFailed(f"{model.name}: {path} is {size} bytes, the model declares size_bytes "
                                 f"{model.size_bytes}; not copied")
    if not model.sha256 and model_format(head) is None:
        raise VerificationFailed(f"{model.name}: {path} is not a recognised model file (GGUF, safetensors) and the "
                                 "model has no sha256 to check it against; not copied (add sha256 to copy it)")


def store_path(models_dir: Path, model: ModelSpec) -> Path:
    return Path(models_dir) / model.filename


def in_store(models_dir: Path, model: ModelSpec, record: dict | None) -> bool:
    """True when the store holds this model as last verified (no hashing: the fingerprint)."""
    if not fingerprint_matches(record, store_path(models_dir, model)):
        return False
    return not model.sha256 or record.get("sha256") == model.sha256


def file_sources(model: ModelSpec) -> list[str]:
    return [uri for uri in model.sources if sources.get(uri).delivers_file(uri)]


def preflight(model: ModelSpec, models_dir: Path) -> None:
    """What can be refused before fetching: room on the disk, and a local source file that is not
    what the model declares (checked without reading more than its first bytes)."""
    _check_room(model, models_dir)
    local = next((u for u in file_sources(model) if sources.scheme_of(u) == "file"), None)
    if local is not None:
        try:
            check_local_source(local, model)
        except sources.SourceFailed:
            pass  # missing or unreadable: the next source may deliver


def _check_room(model: ModelSpec, models_dir: Path) -> None:
    if not model.size_bytes:
        return  # size unknown (a pull by hand): the fetcher stops cleanly if the disk fills
    probe = Path(models_dir)
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if model.size_bytes * 1.05 > free:
        raise EnvironmentProblem(f"{model.name} needs {model.size_bytes / 1e9:.1f} GB, {models_dir} has "
                                 f"{free / 1e9:.1f} GB free: not enough space left on device")


def fetch(model: ModelSpec, models_dir: Path, report, ledger=None, offline: Bundle | None = None) -> dict:
    """Fetch `model` into the store from its first working source (from `offline` alone, the
    bundle being installed, when there is one); return its fingerprint. Each source delivers
    through the fetcher: verified (size, GGUF magic and version, sha256) before the file takes
    its name."""

    target = store_path(models_dir, model)
    private_dir(target.parent)
    _check_room(model, models_dir)
    expect = fetcher.Expect(size=model.size_bytes or None, sha256=model.sha256, gguf=model.is_gguf)
    failures = []

    member = offline.model_member(model.sha256) if offline else None
    if member:
        result = fetcher.copy_from(lambda: offline.open_member(member), offline.member_size(member),
                                   f"bundle:{offline.path.name}", target, expect, label=model.name, report=report)
        return file_fingerprint(target) | {"sha256": result.sha256, "source": f"bundle:{offline.path.name}"}
    for uri in file_sources(model):
        try:
            if sources.scheme_of(uri) == "file":
                check_local_source(uri, model)
            result = sources.get(uri).fetch(uri, target, expect, label=model.name, report=report, ledger=ledger)
        except (sources.SourceFailed, fetcher.FetchFailed) as exc:
            failures.append(f"{uri}: {exc}")
            report.line(f"  {model.name}: source {uri} failed ({exc}); trying the next")
            continue
        return file_fingerprint(target) | {"sha256": result.sha256, "source": uri}
    raise FarmhandError(f"{model.name}: no source delivered: " + ("; ".join(failures) or "no file source listed"))


def used_by(paths, model_file: Path) -> list[str]:
    """The runtimes whose specs serve this file (from runtimes.json)."""
    specs = statefiles.read_specs_or_none(paths)
    return [r.name for r in (specs.runtimes if specs else ()) if str(model_file) in r.argv]


def sha256_file(path: Path) -> str:

    return digest(path)
