"""https:// and http:// downloads through the fetcher (resumed, verified, stall-proof), rewritten
to the https mirror when one is configured."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from .. import fetcher
from .base import REACH_TIMEOUT, Source, SourceFailed, mirrors, short_reason, via


def head(url: str, timeout: float, headers: dict | None = None) -> tuple[bool, str]:
    import requests

    scheme = url.split("://", 1)[0]
    try:
        resp = requests.head(url, timeout=timeout, allow_redirects=True, headers=headers or {})
    except requests.RequestException as exc:
        return False, f"{scheme}: {short_reason(exc)}"
    if resp.status_code >= 400 and resp.status_code != 405:
        return False, f"{scheme}: HTTP {resp.status_code}"
    return True, f"{scheme}: reachable"


class HttpSource(Source):
    def __init__(self, scheme: str):
        self.scheme = scheme

    def url(self, uri: str) -> str:
        base = mirrors().https
        if base and self.scheme == "https":
            parts = urlparse(uri)
            return f"{base}/{parts.hostname}{parts.path}" + (f"?{parts.query}" if parts.query else "")
        return uri

    def describe(self, uri: str) -> str:
        url = self.url(uri)
        return f"{uri}" + (f" via mirror {url}" if url != uri else "") + f" ({via(url)})"

    def reachable(self, uri: str, timeout: float = REACH_TIMEOUT) -> tuple[bool, str]:
        return head(self.url(uri), timeout)

    def fetch(self, uri: str, dest: Path, expect, *, label: str, report, ledger=None):
        try:
            return fetcher.download(self.url(uri), dest, expect, label=label, report=report)
        except fetcher.FetchFailed as exc:
            raise SourceFailed(str(exc)) from None
