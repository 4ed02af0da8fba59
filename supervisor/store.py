"""The model store: fetch a model from the first source that works, verify it, keep it.

Every fetch lands in a `.partial` file beside its final name; only a file whose size, sha256
and (for GGUF) magic check out takes the final name. A mismatch deletes the partial file and
names both digests. The ledger keeps a fingerprint of each verified file so a re-run trusts
it without re-hashing. Which sources exist and how they deliver is sources/'s business.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from . import sources
from .deployment import ModelSpec
from .errors import EnvironmentProblem, FarmhandError, VerificationFailed
from .ledger import file_fingerprint, fingerprint_matches
from .paths import private_dir

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
    from .sources.file import local_path

    path = local_path(uri)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise sources.SourceFailed(f"{path}: {exc.strerror}") from None
    if size != model.size_bytes:
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
    probe = Path(models_dir)
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if model.size_bytes * 1.05 > free:
        raise EnvironmentProblem(f"{model.name} needs {model.size_bytes / 1e9:.1f} GB, {models_dir} has "
                                 f"{free / 1e9:.1f} GB free: not enough space left on device")


def fetch(model: ModelSpec, models_dir: Path, report, ledger=None) -> dict:
    """Fetch `model` into the store from its first working source; return its fingerprint."""
    target = store_path(models_dir, model)
    private_dir(target.parent)
    _check_room(model, models_dir)
    partial = target.with_name(target.name + ".partial")
    failures = []
    for uri in file_sources(model):
        try:
            if sources.scheme_of(uri) == "file":
                check_local_source(uri, model)
            sources.get(uri).fetch(uri, partial, size_hint=model.size_bytes, label=model.name, report=report,
                                   ledger=ledger)
        except sources.SourceFailed as exc:
            failures.append(f"{uri}: {exc}")
            report.line(f"  {model.name}: source {uri} failed ({exc}); trying the next")
            continue
        digest = verify(partial, model)
        os.replace(partial, target)
        return file_fingerprint(target) | {"sha256": digest, "source": uri}
    raise FarmhandError(f"{model.name}: no source delivered: " + ("; ".join(failures) or "no file source listed"))


def verify(partial: Path, model: ModelSpec) -> str:
    """Check size, GGUF magic and sha256 of a fetched file; delete it if any is wrong."""
    with open(partial, "rb") as fh:
        head = fh.read(4)
    if model.is_gguf and head != GGUF_MAGIC:
        partial.unlink(missing_ok=True)
        raise VerificationFailed(
            f"{model.name}: not a GGUF file (first bytes {head!r}, expected {GGUF_MAGIC!r}); partial file removed")
    digest = sha256_file(partial)
    if model.sha256 and digest != model.sha256:
        partial.unlink(missing_ok=True)
        raise VerificationFailed(
            f"{model.name}: sha256 mismatch: expected {model.sha256}, got {digest}; partial file {partial} removed")
    os.chmod(partial, 0o600)
    return digest


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()
