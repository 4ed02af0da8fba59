"""A runtime's stdout/stderr: size-based rotation (log, log.1 ... log.N), owner-only files, and
the last lines kept in memory for `status` when a runtime fails."""

from __future__ import annotations

import collections
import os
from pathlib import Path

from .paths import private_dir

TAIL_LINES = 40


class RotatingLog:
    def __init__(self, path: Path, max_bytes: int, backups: int):
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        private_dir(path.parent)
        self._fh = self._open("ab")

    def _open(self, mode: str):
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode == "ab" else os.O_TRUNC), 0o600)
        return os.fdopen(fd, mode)

    def write(self, line: bytes) -> None:
        self.tail.append(line.decode(errors="replace").rstrip())
        if self._fh.tell() + len(line) > self.max_bytes:
            self._rotate()
        self._fh.write(line)
        self._fh.flush()

    def _rotate(self) -> None:
        self._fh.close()
        for n in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{n + 1}"))
        if self.backups:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._fh = self._open("wb")

    def close(self) -> None:
        self._fh.close()
