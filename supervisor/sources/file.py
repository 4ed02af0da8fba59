"""file:///PATH: a model already on this machine, copied into the store (hashed as it is copied)."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlparse

from .. import fetcher
from .base import REACH_TIMEOUT, Source, SourceFailed


def local_path(uri: str) -> Path:
    return Path(unquote(urlparse(uri).path))


class FileSource(Source):
    scheme = "file"
    offline = True

    def reachable(self, uri: str, timeout: float = REACH_TIMEOUT) -> tuple[bool, str]:
        path = local_path(uri)
        return (True, "local file") if os.path.isfile(path) else (False, f"file: {path} does not exist")

    def fetch(self, uri: str, dest: Path, expect, *, label: str, report, ledger=None):
        source = local_path(uri)
        if not source.is_file():
            raise SourceFailed(f"{source} does not exist")
        return fetcher.copy(source, dest, expect, label=label, report=report)
