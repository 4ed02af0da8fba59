"""The fetcher: the one way farmhand brings a file from a URL to disk (models and archives).

- The bytes land in `<name>.partial` beside the final name; a cut connection, a read that
  times out, or a stall (less than `min_rate` bytes a second over `stall_s`) is retried with
  backoff, resuming with an HTTP Range request; a server that ignores Range (200 to a ranged
  request) starts the file over. A run interrupted for good leaves the partial file: the next
  run resumes it.
- The sha256 is computed in the same pass, on a second thread, while the next bytes arrive (so
  verifying costs no extra read and almost no extra time); size, digest and the GGUF magic and
  version are checked before the file takes its final name. A mismatch removes the partial file
  and names both digests.
- Two fetches of the same file at once (two processes) download it once: a per-file lock; the
  second finds the file in place and checks it.
- Errors say how many bytes arrived and that a re-run resumes.
"""

from __future__ import annotations

import hashlib
import math
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import BadInput, FarmhandError, VerificationFailed
from .lock import FileLock

GGUF_VERSIONS = (1, 2, 3)


class FetchFailed(FarmhandError):
    """This URL could not deliver (after its retries); another source may."""


class Stalled(Exception):
    pass


@dataclass(frozen=True)
class Policy:
    """How downloads behave: chunk size, timeouts, what counts as a stall, retries (FARMHAND_FETCH_*)."""

    chunk: int = 1 << 20
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0  # a read that waits longer than this is a stall
    stall_s: float = 30.0  # ... and so is less than min_rate bytes/s over this long
    min_rate: int = 1024
    retries: int = 5
    backoff_s: float = 0.5  # doubled each retry, at most backoff_max_s
    backoff_max_s: float = 30.0

    @classmethod
    def from_env(cls) -> Policy:
        """FARMHAND_FETCH_<FIELD> overrides a field (tests shorten the stall timeouts)."""
        values = {}
        for name, field in cls.__dataclass_fields__.items():
            var = f"FARMHAND_FETCH_{name.upper()}"
            raw = os.environ.get(var)
            if raw is None:
                continue
            try:
                value = float(raw)
            except ValueError:
                value = float("nan")
            if not math.isfinite(value) or value < 0 or (value == 0 and name != "retries") or (
                    field.type == "int" and value != int(value)):
                raise BadInput(f"{var}={raw!r}: expected a {'whole ' if field.type == 'int' else ''}number above 0 "
                               f"(default {getattr(cls, name)}); unset it or fix it")
            values[name] = int(value) if field.type == "int" else value
        return cls(**values)


@dataclass(frozen=True)
class Expect:
    """What the caller knows of the file: every given field is checked."""

    size: int | None = None
    sha256: str | None = None
    gguf: bool = False


@dataclass
class Result:
    """A verified file: its digest and size, and what this run transferred to get it."""

    sha256: str
    size: int
    transferred: int  # bytes that crossed the network in this run
    resumed_from: int  # bytes already there when this run started
    attempts: int
    url: str


def check(path: Path, expect: Expect, digest: str, label: str) -> None:
    """Size, GGUF magic and version, sha256; the file is removed when any is wrong."""
    size = path.stat().st_size
    problem = None
    if expect.size is not None and size != expect.size:
        problem = f"size mismatch: expected {expect.size} bytes, got {size}"
    elif expect.gguf:
        with open(path, "rb") as fh:
            head = fh.read(8)
        version = int.from_bytes(head[4:8], "little") if len(head) == 8 else None
        if head[:4] != b"GGUF":
            problem = f"not a GGUF file (first bytes {head[:4]!r}, expected b'GGUF')"
        elif version not in GGUF_VERSIONS:
            problem = f"unsupported GGUF version {version}"
    if problem is None and expect.sha256 and digest != expect.sha256:
        problem = f"sha256 mismatch: expected {expect.sha256}, got {digest}"
    if problem:
        path.unlink(missing_ok=True)
        raise VerificationFailed(f"{label}: {problem}; partial file {path} removed")


def produce(dest: Path, expect: Expect, label: str, write, origin: str = "") -> Result:
    """Make `dest` through `write(partial) -> Result`, under a per-file lock; checked, owner-only,
    renamed into place only when whole. A `dest` already there (another process made it while we
    waited for the lock) is checked and kept; one that fails the check is made again."""

    with FileLock(dest.with_name(f".farmhand-lock-{dest.name}")):
        if dest.exists():
            digest = sha256_file(dest)
            try:
                check(dest, expect, digest, label)
                return Result(digest, dest.stat().st_size, 0, dest.stat().st_size, 0, origin)
            except VerificationFailed:
                pass  # damaged since (check removed it): make it again
        partial = dest.with_name(dest.name + ".partial")
        result = write(partial)
        check(partial, expect, result.sha256, label)
        os.chmod(partial, 0o600)
        os.replace(partial, dest)
        return result


def download(url: str, dest: Path, expect: Expect, *, label: str, report, headers: dict | None = None,
             policy: Policy | None = None) -> Result:
    """Fetch `url` to `dest` (resuming `dest.partial`), verified; `dest` appears only when whole."""
    policy = policy or Policy.from_env()
    return produce(dest, expect, label,
                   lambda partial: _transfer(url, partial, expect, label, report, headers or {}, policy), url)


def copy(source: Path, dest: Path, expect: Expect, *, label: str, report) -> Result:
    """Copy a local file into place, hashing in the same pass."""
    return copy_from(lambda: open(source, "rb"), source.stat().st_size, f"file://{source}", dest, expect,
                     label=label, report=report)


def copy_from(opener, total: int, origin: str, dest: Path, expect: Expect, *, label: str, report) -> Result:
    """Copy what `opener()` reads (a file, a bundle's member) into place, hashing in the same pass."""
    def write(partial: Path) -> Result:
        digest = hashlib.sha256()
        done = 0
        with opener() as src, open(partial, "wb") as dst:
            for block in iter(lambda: src.read(1 << 20), b""):
                digest.update(block)
                try:
                    dst.write(block)
                except OSError as exc:  # the disk: name the file it was writing
                    exc.filename = exc.filename or str(partial)
                    raise
                done += len(block)
                report.transfer(f"copy {label}", done, total)
        report.transfer(f"copy {label}", done, total, finished=True)
        return Result(digest.hexdigest(), done, 0, 0, 1, origin)

    return produce(dest, expect, label, write, origin)


def _transfer(url, partial: Path, expect: Expect, label, report, headers, policy: Policy) -> Result:
    import requests
    import urllib3

    session = requests.Session()
    hasher = hashlib.sha256()
    have = partial.stat().st_size if partial.exists() else 0
    if have:
        with open(partial, "rb") as fh:  # once per run; retries below keep the hasher's state
            for block in iter(lambda: fh.read(policy.chunk), b""):
                hasher.update(block)
    started_with, transferred, attempt = have, 0, 0
    total = expect.size
    task = f"download {label}"
    while True:
        attempt += 1
        why = None
        try:
            range_headers = {"Range": f"bytes={have}-"} if have else {}
            with session.get(url, headers=headers | range_headers, stream=True,
                             timeout=(policy.connect_timeout_s, policy.read_timeout_s)) as resp:
                if resp.status_code == 416 and have and (total is None or have == total):
                    break  # the partial file is already whole
                if resp.status_code in (401, 403, 404, 410):
                    raise FetchFailed(f"HTTP {resp.status_code}")
                if resp.status_code == 429 or resp.status_code >= 500:
                    raise _Retry(f"HTTP {resp.status_code}")
                if resp.status_code == 200 and have:
                    # The server ignored the Range request: start over.
                    have, hasher = 0, hashlib.sha256()
                elif resp.status_code == 206 and not resp.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
                    have, hasher = 0, hashlib.sha256()
                    raise _Retry(f"unexpected Content-Range {resp.headers.get('Content-Range')!r}")
                elif resp.status_code not in (200, 206):
                    raise FetchFailed(f"HTTP {resp.status_code}")
                length = resp.headers.get("Content-Length")
                if length is not None and total is None:
                    total = have + int(length)
                got = _stream(resp, partial, "ab" if have else "wb", hasher, policy,
                              lambda n, base=have, total=total: report.transfer(task, base + n, total))
                have += got
                transferred += got
                if total is not None and have < total:
                    raise _Retry(f"the connection closed after {have} of {total} bytes")
                break
        except (_Retry, Stalled) as exc:
            why = str(exc)
        except _Local as exc:
            raise exc.error from None  # the disk, not the network: no retry helps
        except (requests.RequestException, urllib3.exceptions.HTTPError, ConnectionError, TimeoutError) as exc:
            why = short_reason(exc)
        finally:
            if partial.exists():
                have = partial.stat().st_size
        if attempt > policy.retries:
            raise FetchFailed(f"{why} ({attempt} attempts); {have} of {total or '?'} bytes arrived and are kept in "
                              f"{partial}: a re-run resumes from there")
        report.line(f"  {label}: {why}; retrying in {_delay(policy, attempt):.1f}s from byte {have}")
        time.sleep(_delay(policy, attempt))
    report.transfer(task, have, total or have, finished=True)
    return Result(hasher.hexdigest(), have, transferred, started_with, attempt, url)


class _Retry(Exception):
    pass


class _Local(Exception):
    """An error of this machine (writing the file), carried out of the reader loop."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


def _delay(policy: Policy, attempt: int) -> float:
    return min(policy.backoff_max_s, policy.backoff_s * 2 ** (attempt - 1))


def _stream(resp, partial: Path, mode: str, hasher, policy: Policy, progress) -> int:
    """Read the body on this thread while another hashes and writes what arrived: the digest
    costs no second pass. Returns the bytes written. Raises Stalled when the rate stays under
    `min_rate` for `stall_s` (a trickle never trips a read timeout)."""
    blocks: queue.Queue = queue.Queue(maxsize=16)
    written = [0]
    failure: list[BaseException] = []

    def sink():
        try:
            with open(partial, mode) as fh:
                while (block := blocks.get()) is not None:
                    hasher.update(block)  # releases the GIL for large blocks: runs beside the reads
                    fh.write(block)
                    written[0] += len(block)
        except BaseException as exc:  # a full disk, say: the reader must stop too
            failure.append(exc)
            while blocks.get() is not None:
                pass

    writer = threading.Thread(target=sink, name="fetch-writer", daemon=True)
    writer.start()
    window_start, window_bytes, received, last = time.monotonic(), 0, 0, 0.0
    try:
        while True:
            block = resp.raw.read1(policy.chunk) if hasattr(resp.raw, "read1") else resp.raw.read(policy.chunk)
            if not block:
                break
            if failure:
                break
            blocks.put(block)
            received += len(block)
            window_bytes += len(block)
            now = time.monotonic()
            if now - window_start >= policy.stall_s:
                if window_bytes < policy.min_rate * (now - window_start):
                    raise Stalled(f"stalled: {window_bytes} bytes in the last {now - window_start:.0f}s")
                window_start, window_bytes = now, 0
            if now - last >= 0.1:
                progress(received)
                last = now
    finally:
        blocks.put(None)
        writer.join()
    if failure:
        error = failure[0]
        if isinstance(error, OSError) and not error.filename:
            error.filename = str(partial)
        raise _Local(error)
    return written[0]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def short_reason(exc: Exception) -> str:
    """A requests exception as a few words a person can act on."""
    text = str(exc)
    if "NameResolutionError" in text or "Name or service not known" in text:
        return "name does not resolve (offline?)"
    for marker in ("Connection refused", "timed out", "Network is unreachable"):
        if marker in text:
            return marker.lower()
    return type(exc).__name__
