"""file:///PATH: a model already on this machine, copied into the store (digest checked after)."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlparse

from . import REACH_TIMEOUT, Source, SourceFailed

CHUNK = 1 << 20


def local_path(uri: str) -> Path:
    return Path(unquote(urlparse(uri).path))


def copy_with_progress(source: Path, partial: Path, label: str, report) -> None:
    total = source.stat().st_size
    with open(source, "rb") as src, open(partial, "wb") as dst:
        done = 0
        for block in iter(lambda: src.read(CHUNK), b""):
            try:
                dst.write(block)
            except OSError as exc:
                exc.filename = exc.filename or str(partial)
                raise
            done += len(block)
            report.progress(f"copy {label}", done / max(total, 1))


class FileSource(Source):
    scheme = "file"
    offline = True

    def reachable(self, uri: str, timeout: float = REACH_TIMEOUT) -> tuple[bool, str]:
        path = local_path(uri)
        return (True, "local file") if os.path.isfile(path) else (False, f"file: {path} does not exist")

    def fetch(self, uri: str, partial: Path, *, size_hint: int, label: str, report, ledger=None) -> None:
        source = local_path(uri)
        if not source.is_file():
            raise SourceFailed(f"{source} does not exist")
        copy_with_progress(source, partial, label, report)
