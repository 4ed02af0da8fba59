"""One supervisor per farmhand home: an flock on a lock file, checked against the file's inode.

A stopping supervisor unlinks the lock file; a new one that opened the old file before the
unlink would hold a lock on nothing, so it compares inodes and retries on a mismatch.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .errors import Conflict
from .paths import private_dir


class LockHeld(Exception):
    pass


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive flock on `path`, or None when another process holds it. A file
    unlinked by its last holder between our open and our flock is not trusted: the inode is
    compared with the path's, and a mismatch means open the new file and try again."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


class InstanceLock:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise LockHeld at once (never waits)."""
        private_dir(self.path.parent)
        self._fd = _try_lock(self.path)
        if self._fd is None:
            raise LockHeld(str(self.path))

    def release(self) -> None:
        """Remove the file while still holding the lock, then let go."""
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None


def is_held(path: Path) -> bool:
    """Whether some process holds the lock at `path` (a stale file left by a killed one is not)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def holders(path: Path) -> list[int]:
    """Pids holding a flock on the file at `path`, read from /proc/locks (Linux): the lock
    itself says who holds it, whatever a record beside it says."""
    try:
        st = os.stat(path)
        with open("/proc/locks") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return []
    # By inode: overlay filesystems can show another device number here than stat does; the
    # caller checks that a holder is the process it expects.
    want = f":{st.st_ino}"
    found = []
    for line in lines:
        fields = line.split()
        if "->" in fields:  # a waiter, not a holder
            continue
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].endswith(want) and fields[4].isdigit():
            found.append(int(fields[4]))
    return found


class HomeLock:
    """One converging command (apply, destroy, up, down, deploy) per farmhand home at a time.

    The holder writes who it is (pid, command, since) into the lock file, so a second command
    can say what it waits for, or name it when told not to wait (--no-wait). The lock is an
    flock: it is released when its holder dies, however it dies."""

    def __init__(self, path: Path, command: str):
        self.path, self.command = Path(path), command
        self._fd: int | None = None
        self.created_dirs: list[Path] = []  # made only to hold the lock: removed with it if still empty

    def holder(self) -> dict:
        import json

        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def describe_holder(self) -> str:
        h = self.holder()
        return f"pid {h.get('pid', '?')} (farmhand {h.get('command', '?')}, since {h.get('since', '?')})"

    def acquire(self, wait: bool = True, report=None) -> None:
        import json
        import time

        self.created_dirs = list(reversed(private_dir(self.path.parent)))  # innermost first, for removal
        told = False
        while True:
            fd = _try_lock(self.path)
            if fd is None:
                if not wait:
                    raise Conflict(f"another farmhand command is working on this home: {self.describe_holder()}; "
                                   "run again without --no-wait to wait for it")
                if not told and report is not None:
                    report.line(f"waiting for {self.describe_holder()} to finish ...")
                    told = True
                time.sleep(0.05)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "command": self.command,
                                     "since": time.strftime("%Y-%m-%dT%H:%M:%S")}).encode())
            self._fd = fd
            return

    def release(self, remove: bool = True) -> None:
        """Let go. The file goes too (a command waiting on the old file sees the inode change and
        takes a new one), and so do directories made only to hold it, if nothing else is in them."""
        if self._fd is None:
            return
        if remove:
            self.path.unlink(missing_ok=True)
        else:
            os.ftruncate(self._fd, 0)
        os.close(self._fd)
        self._fd = None
        for directory in self.created_dirs:
            try:
                directory.rmdir()
            except OSError:
                break

    def __enter__(self) -> HomeLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class FileLock:
    """A lock around making one file (two fetches of the same model download it once). Blocks
    until free; the lock file goes when released (a waiter on the old file sees the inode change)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: int | None = None

    def __enter__(self) -> FileLock:
        import time

        private_dir(self.path.parent)
        while (fd := _try_lock(self.path)) is None:
            time.sleep(0.05)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None
