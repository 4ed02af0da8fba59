"""A small content-addressed memo in farmhand's cache dir, for work a no-op run must not repeat.

Keys are digests of everything the result depends on (a document and its schema; a template
and its inputs), so a stale entry can never be returned: changed input, new key. Used to skip
jsonschema validation and jinja2 rendering of unchanged inputs (each import costs tens of ms).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

from .fsio import atomic_write
from .paths import private_dir

_file: Path | None = None
_data: dict | None = None
MAX_ENTRIES = 256


def configure(path: Path | None) -> None:
    global _file, _data
    _file, _data = path, None


def digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _load() -> dict:
    global _data
    if _data is None:
        try:
            _data = json.loads(_file.read_text()) if _file else {}
        except (FileNotFoundError, json.JSONDecodeError):
            _data = {}
    return _data


MISSING = object()


def lookup(namespace: str, key: str) -> object:
    """The remembered value, or MISSING."""
    return _load().get(f"{namespace}:{key}", MISSING)


_dirty = False


def store(namespace: str, key: str, value: object) -> None:
    """Remember a value; it reaches the file at flush() (when the command succeeded)."""
    global _dirty
    data = _load()
    data[f"{namespace}:{key}"] = value
    _dirty = True


def forget() -> None:
    """Drop what this command learned: destroy removed the cache, and nothing is written back."""
    global _dirty
    _dirty = False


def flush() -> None:
    """Write what was learned. Called once a command succeeded, so a refused command leaves no
    cache file behind."""
    global _dirty
    if not _dirty or _file is None or _data is None:
        return

    data = _data
    if len(data) > MAX_ENTRIES:
        for old in list(data)[: len(data) - MAX_ENTRIES]:
            del data[old]
    try:
        private_dir(_file.parent)
        atomic_write(_file, json.dumps(data), 0o600)
        _dirty = False
    except OSError:
        pass  # a read-only cache only costs speed


def remember(namespace: str, key: str, compute: Callable[[], object]) -> object:
    """compute() once per (namespace, key); later calls (and later runs) read it back."""
    value = lookup(namespace, key)
    if value is MISSING:
        value = compute()
        store(namespace, key, value)
    return value
