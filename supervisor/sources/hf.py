"""hf://ORG/REPO/FILE[@REVISION]: a file of a Hugging Face repo, through huggingface_hub.

huggingface_hub resolves the file on the Hub (HF_ENDPOINT, or the hf mirror), authenticates
with HF_TOKEN from the environment (never written anywhere; the token is not sent on to the CDN
the Hub redirects to), honours HF_HUB_OFFLINE, and names what went wrong (a gated repo, a
missing repo, file or revision). The Hub's metadata gives the file's size and, for large (LFS)
files, its sha256, so a file is verified even when the profile pins no digest. The transfer
itself is farmhand's fetcher (resume, one-pass hashing, stall detection, progress).
hf://ORG/REPO (no file) is a whole repo: a backend (vLLM) reads it, farmhand's store does not.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .. import fetcher
from ..errors import BadInput
from ..refs import is_sha256
from .base import REACH_TIMEOUT, Source, SourceFailed, mirrors, via
from .http import head


@dataclass(frozen=True)
class HfFile:
    """A file in a Hugging Face repository at a revision (hf://REPO/FILE[@REV])."""

    repo: str
    file: str
    revision: str


def parse(uri: str) -> HfFile:
    body, _, revision = uri[len("hf://"):].partition("@")
    parts = body.strip("/").split("/")
    return HfFile("/".join(parts[:2]), "/".join(parts[2:]), revision or "main")


def repo_cache_dir(hf_home: Path, repo: str) -> Path:
    """Where huggingface_hub keeps a repo under HF_HOME (its own layout: hub/models--ORG--NAME)."""
    return hf_home / "hub" / ("models--" + repo.replace("/", "--"))


def endpoint() -> str:
    return (mirrors().hf or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def token() -> str | bool:
    """HF_TOKEN from the environment, or no token at all (False: not the Hub's cached login)."""
    return os.environ.get("HF_TOKEN") or False


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


# The Hub's own rules for repo ids (huggingface_hub.utils.validate_repo_id), and file paths
# inside a repo that stay inside it.
REPO_PART = re.compile(r"^(?!.*(?:--|\.\.))[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,255}$")


def check(uri: str) -> None:
    """BadInput unless `uri` is hf://ORG/REPO[/PATH][@REVISION] with a valid repo id, a path that
    stays inside the repo and a plain revision."""
    f = parse(uri)
    parts = f.repo.split("/")
    bad = (len(parts) != 2 or not all(REPO_PART.match(p) for p in parts)
           or any(seg in ("", ".", "..") for seg in f.file.split("/")) and f.file
           or not REVISION.match(f.revision) or ".." in f.revision.split("/"))
    if bad:
        raise BadInput(f"{uri}: a Hugging Face source is hf://ORG/REPO[/FILE][@REVISION] (e.g. "
                       "hf://ggml-org/gemma-3-270m-GGUF/gemma-3-270m-Q4_K_M.gguf)")


class HfSource(Source):
    scheme = "hf"

    def check(self, uri: str) -> None:
        check(uri)

    def delivers_file(self, uri: str) -> bool:
        return bool(parse(uri).file)

    def url(self, uri: str) -> str:
        f = parse(uri)
        if not f.file:
            return f"{endpoint()}/api/models/{f.repo}/revision/{f.revision}"
        from huggingface_hub import hf_hub_url

        return hf_hub_url(f.repo, f.file, revision=f.revision, endpoint=endpoint())

    def describe(self, uri: str) -> str:
        return f"{uri} via {endpoint()} ({via(endpoint())})"

    def metadata(self, uri: str, timeout: float):
        """The Hub's answer for this file (location, size, etag), or SourceFailed saying why not."""
        if offline():
            raise SourceFailed("offline (HF_HUB_OFFLINE is set)")
        from huggingface_hub import errors, get_hf_file_metadata

        f = parse(uri)
        try:
            return get_hf_file_metadata(self.url(uri), token=token(), timeout=timeout, endpoint=endpoint())
        except errors.GatedRepoError:
            raise SourceFailed(f"{f.repo} is a gated repo: accept its licence on {endpoint()}/{f.repo} and set "
                               "HF_TOKEN to a token of that account") from None
        except errors.RepositoryNotFoundError:
            raise SourceFailed(f"no repo {f.repo} on {endpoint()} (or it is private: set HF_TOKEN)") from None
        except errors.RevisionNotFoundError:
            raise SourceFailed(f"{f.repo} has no revision {f.revision}") from None
        except errors.EntryNotFoundError:
            raise SourceFailed(f"{f.repo}@{f.revision} has no file {f.file}") from None
        except errors.HfHubHTTPError as exc:
            status = getattr(getattr(exc, "response", None), "status_code", "?")
            raise SourceFailed(f"HTTP {status} from {endpoint()}") from None
        except Exception as exc:  # network errors, from httpx
            raise SourceFailed(_reason(exc)) from None

    def reachable(self, uri: str, timeout: float = REACH_TIMEOUT) -> tuple[bool, str]:
        try:
            if self.delivers_file(uri):
                self.metadata(uri, timeout)
            else:
                if offline():
                    return False, "hf: offline (HF_HUB_OFFLINE is set)"
                return head(self.url(uri), timeout)
        except SourceFailed as exc:
            return False, f"hf: {exc}"
        return True, "hf: reachable"

    def fetch(self, uri: str, dest: Path, expect, *, label: str, report, ledger=None):
        from dataclasses import replace

        meta = self.metadata(uri, timeout=REACH_TIMEOUT * 4)
        hub_sha = meta.etag if is_sha256(meta.etag) else None
        if expect.sha256 and hub_sha and expect.sha256 != hub_sha:
            raise SourceFailed(f"the Hub says {uri} has sha256 {hub_sha}, the profile pins {expect.sha256}: "
                               "pin the revision the profile was written for")
        want = replace(expect, sha256=expect.sha256 or hub_sha)
        from huggingface_hub.utils import build_hf_headers

        same_host = meta.location.startswith(endpoint())
        headers = build_hf_headers(token=token()) if same_host else {}  # the token stays on the Hub
        try:
            return fetcher.download(meta.location, dest, want, label=label, report=report, headers=headers)
        except fetcher.FetchFailed as exc:
            raise SourceFailed(str(exc)) from None


def _reason(exc: Exception) -> str:
    text = f"{type(exc).__name__}: {exc}"
    for marker, said in (("Name or service not known", "name does not resolve (offline?)"),
                         ("nodename nor servname", "name does not resolve (offline?)"),
                         ("Connection refused", "connection refused"), ("timed out", "timed out"),
                         ("Timeout", "timed out")):
        if marker in text:
            return said
    return type(exc).__name__


def fetch_repo(uri: str, hf_home: Path, report) -> Path:
    """A whole repo (what vLLM serves) into `hf_home`'s Hub cache, where a backend with HF_HOME
    there finds it offline. huggingface_hub downloads it (its cache layout, its verification of
    each file against the Hub's digest); returns the repo's cache directory."""
    if offline():
        raise SourceFailed("offline (HF_HUB_OFFLINE is set)")
    from huggingface_hub import errors, snapshot_download

    f = parse(uri)
    report.line(f"  {f.repo}@{f.revision}: downloading the repo into {hf_home / 'hub'}")
    try:
        snapshot_download(f.repo, revision=f.revision, cache_dir=hf_home / "hub", token=token(), endpoint=endpoint())
    except Exception as exc:  # snapshot_download wraps the Hub's answer: name the root cause
        cause = exc
        while cause.__cause__ is not None or cause.__context__ is not None:
            if isinstance(cause, (errors.GatedRepoError, errors.RepositoryNotFoundError,
                                  errors.RevisionNotFoundError)):
                break
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, errors.GatedRepoError) or "gated" in str(exc).lower():
            raise SourceFailed(f"{f.repo} is a gated repo: accept its licence on {endpoint()}/{f.repo} and set "
                               "HF_TOKEN to a token of that account") from None
        if isinstance(cause, errors.RevisionNotFoundError):
            raise SourceFailed(f"{f.repo} has no revision {f.revision}") from None
        if isinstance(cause, errors.RepositoryNotFoundError):
            raise SourceFailed(f"no repo {f.repo} on {endpoint()} (or it is private: set HF_TOKEN)") from None
        raise SourceFailed(f"{f.repo}: {_reason(exc)}") from None
    return hf_home / "hub" / ("models--" + f.repo.replace("/", "--"))


def repo_record(repo_dir: Path, uri: str) -> dict:
    """The ledger's record of a repo in the Hub cache: the commit its revision resolved to, its size."""
    ref_file = repo_dir / "refs" / parse(uri).revision
    revision = ref_file.read_text().strip() if ref_file.exists() else parse(uri).revision
    size = sum(p.stat().st_size for p in (repo_dir / "blobs").glob("*"))
    return {"path": str(repo_dir), "kind": "repo", "size": size, "sha256": None, "revision": revision, "source": uri}


def verify_repo(repo_dir: Path) -> list[str]:
    """Files of a cached repo whose content no longer matches the digest their blob is named by
    (sha256 for large files, the git blob sha1 for small ones); empty when all match."""
    import hashlib

    bad = []
    for blob in sorted((repo_dir / "blobs").glob("*")):
        data_hash = hashlib.sha256()
        git = hashlib.sha1(f"blob {blob.stat().st_size}\0".encode())
        with open(blob, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                data_hash.update(block)
                git.update(block)
        if blob.name not in (data_hash.hexdigest(), git.hexdigest()):
            bad.append(blob.name)
    return bad
