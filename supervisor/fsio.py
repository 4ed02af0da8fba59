"""Writing farmhand's own files: atomically, owner-only directories recorded before they are
made, and fingerprints that tell a verified file from one changed since."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from .paths import private_dir


class ResourceRecorder(Protocol):
    """What ensure_dir needs of a ledger: record a path (and save) before it is created."""

    def add_resource(self, kind: str, path: Path, step: str) -> None: ...


def atomic_write(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    """Write to a temp file beside `path` (owner-only, a fresh name), fsync, then rename: readers
    never see half a file. An interrupted write leaves `.NAME.*.tmp`, which the next converging
    command sweeps."""
    path = Path(path)
    private_dir(path.parent)
    tmp = path.parent / f".{path.name}.{os.urandom(6).hex()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) and not exc.filename:
            exc.filename = str(path)
        raise


def ensure_dir(path: Path, ledger: ResourceRecorder, step: str) -> Path:
    """Create a directory (and parents), owner-only, each recorded before it is made."""
    private_dir(path, before_each=lambda directory: ledger.add_resource("dir", directory, step))
    return Path(path)


FINGERPRINT = ("size", "mtime_ns", "ctime_ns", "inode")


def file_fingerprint(path: Path) -> dict:
    """What a verified file looked like. ctime and the inode cannot be set back from userspace
    (`touch -r` restores mtime only), so a file changed in place never passes for verified."""
    st = Path(path).stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
            "inode": st.st_ino}


def fingerprint_matches(record: dict | None, path: Path) -> bool:
    if not record:
        return False
    try:
        now = file_fingerprint(path)
    except OSError:
        return False
    return all(now[k] == record.get(k) for k in FINGERPRINT)
