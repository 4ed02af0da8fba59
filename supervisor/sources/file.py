"""file:///PATH: a model already on this machine, copied into the store (hashed as it is copied)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from urllib.parse import unquote, urlparse

from .. import fetcher
from ..errors import BadInput
from .base import REACH_TIMEOUT, Source, SourceFailed


def local_path(uri: str) -> Path:
    return Path(unquote(urlparse(uri).path))


def not_regular(path: Path) -> str | None:
    """Why `path` (when it exists) is not a file farmhand reads: a FIFO would block a read
    forever, a device never ends, a directory is no model."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else
            "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else
            "not a regular file")
    return f"{path} is {kind}; farmhand copies only regular files"


class FileSource(Source):
    scheme = "file"
    offline = True

    def check(self, uri: str) -> None:
        why = not_regular(local_path(uri))
        if why:
            raise BadInput(f"{uri}: {why}")

    def reachable(self, uri: str, timeout: float = REACH_TIMEOUT) -> tuple[bool, str]:
        path = local_path(uri)
        return (True, "local file") if os.path.isfile(path) else (False, f"file: {path} does not exist")

    def fetch(self, uri: str, dest: Path, expect, *, label: str, report, ledger=None):
        source = local_path(uri)
        if not_regular(source):
            raise SourceFailed(not_regular(source))
        if not source.is_file():
            raise SourceFailed(f"{source} does not exist")
        return fetcher.copy(source, dest, expect, label=label, report=report)
