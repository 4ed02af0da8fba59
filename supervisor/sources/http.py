"""https:// and http:// downloads (resumed with Range), and hf://ORG/REPO/FILE[@REVISION] files
from Hugging Face (HF_ENDPOINT, a token from HF_TOKEN sent only to that endpoint)."""

from __future__ import annotations

import os
from pathlib import Path

from . import REACH_TIMEOUT, Source, SourceFailed, short_reason

CHUNK = 1 << 20


def hf_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hf_url(uri: str) -> str:
    """hf://org/repo/path/file.gguf[@revision] -> the resolve URL of that file."""
    body = uri[len("hf://"):]
    body, _, revision = body.partition("@")
    org, repo, *file = body.split("/")
    return f"{hf_endpoint()}/{org}/{repo}/resolve/{revision or 'main'}/{'/'.join(file)}"


def auth_headers(url: str) -> dict[str, str]:
    token = os.environ.get("HF_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token and url.startswith(hf_endpoint()) else {}


def download(url: str, partial: Path, *, size_hint: int, label: str, report) -> None:
    import requests

    have = partial.stat().st_size if partial.exists() else 0
    headers = auth_headers(url) | ({"Range": f"bytes={have}-"} if have else {})
    try:
        with requests.get(url, stream=True, timeout=(REACH_TIMEOUT * 2, 60), headers=headers) as resp:
            if resp.status_code == 416:  # the partial file is already complete
                return
            if resp.status_code >= 400:
                raise SourceFailed(f"HTTP {resp.status_code}")
            mode = "ab" if resp.status_code == 206 else "wb"
            done = have if mode == "ab" else 0
            total = done + int(resp.headers.get("Content-Length", 0)) or size_hint
            with open(partial, mode) as fh:
                for block in resp.iter_content(CHUNK):
                    fh.write(block)
                    done += len(block)
                    report.progress(f"download {label}", done / max(total, 1))
    except requests.RequestException as exc:
        raise SourceFailed(short_reason(exc)) from None
    except OSError as exc:  # the disk, not the network: name the file it was writing
        exc.filename = exc.filename or str(partial)
        raise


def head(url: str, timeout: float) -> tuple[bool, str]:
    import requests

    scheme = url.split("://", 1)[0]
    try:
        resp = requests.head(url, timeout=timeout, allow_redirects=True, headers=auth_headers(url))
    except requests.RequestException as exc:
        return False, f"{scheme}: {short_reason(exc)}"
    if resp.status_code >= 400 and resp.status_code != 405:
        return False, f"{scheme}: HTTP {resp.status_code}"
    return True, f"{scheme}: reachable"


class HttpSource(Source):
    def __init__(self, scheme: str):
        self.scheme = scheme

    def url(self, uri: str) -> str:
        return uri

    def reachable(self, uri: str, timeout: float = REACH_TIMEOUT) -> tuple[bool, str]:
        return head(self.url(uri), timeout)

    def fetch(self, uri: str, partial: Path, *, size_hint: int, label: str, report, ledger=None) -> None:
        download(self.url(uri), partial, size_hint=size_hint, label=label, report=report)


def hf_repo(uri: str) -> tuple[str, str | None]:
    """hf://org/repo[@revision] -> ("org/repo", revision)."""
    body, _, revision = uri[len("hf://"):].partition("@")
    return "/".join(body.split("/")[:2]), revision or None


class HfSource(HttpSource):
    """hf://ORG/REPO/FILE is a file farmhand downloads; hf://ORG/REPO (no file) is a whole repo
    that a backend reads itself (vLLM)."""

    def __init__(self):
        super().__init__("hf")

    def delivers_file(self, uri: str) -> bool:
        return len(uri[len("hf://"):].split("@")[0].strip("/").split("/")) > 2

    def url(self, uri: str) -> str:
        if self.delivers_file(uri):
            return hf_url(uri)
        repo, revision = hf_repo(uri)
        return f"{hf_endpoint()}/api/models/{repo}" + (f"/revision/{revision}" if revision else "")

    def reachable(self, uri: str, timeout: float = REACH_TIMEOUT) -> tuple[bool, str]:
        ok, why = head(self.url(uri), timeout)
        return ok, "hf:" + why.split(":", 1)[1]
