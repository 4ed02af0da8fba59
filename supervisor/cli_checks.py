"""Checks of command-line values that are not files: one line naming the option and the fix."""

from __future__ import annotations

from urllib.parse import urlparse

from .errors import BadInput
from .refs import is_sha256


def check_url(option: str, value: str | None) -> None:
    if value is None:
        return
    parsed = urlparse(value)
    if parsed.scheme not in ("https", "http") or not parsed.hostname:
        raise BadInput(f"{option} {value}: expected an https:// URL")
    if any(c in value for c in "'\"\n\r` $"):
        raise BadInput(f"{option} {value}: quotes, spaces, '$' and backquotes are not allowed in the URL")


def check_sha256(option: str, value: str | None) -> None:
    if value is not None and not is_sha256(value):
        raise BadInput(f"{option} {value}: expected 64 lowercase hex digits (sha256sum's output)")
