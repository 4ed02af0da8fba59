"""A loopback HTTP server that misbehaves on request, for the fetcher's tests. Each path has a
Behaviour; the server counts requests and the body bytes it sent, so a test can tell a resumed
download (bytes sent once) from one that started over.

Behaviours: cut the connection after N body bytes (one offset per request, in order), ignore
Range headers, answer some statuses first (500, then the file), trickle the body slowly,
redirect, announce more bytes than it sends, and (as a fake Hugging Face endpoint) resolve
repo files with the Hub's headers: a 302 to a "CDN" on another host name carrying
X-Linked-Etag / X-Linked-Size, and X-Error-Code for gated repos, missing repos and files.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class Behaviour:
    data: bytes = b""
    cuts: list[int] = field(default_factory=list)  # per request, in order: close after this many bytes of the file
    ranges: bool = True
    statuses: list[int] = field(default_factory=list)  # answered first, one per request
    trickle_s: float | None = None  # pause between 1 KB pieces
    redirect: str | None = None
    short_by: int = 0  # Content-Length says len(body) + short_by


@dataclass
class HubRepo:
    files: dict[str, bytes]
    gated_token: str | None = None  # a token that may read it; None: public
    commit: str = "c" * 40  # what every revision resolves to


class FaultServer:
    def __init__(self):
        self.paths: dict[str, Behaviour] = {}
        self.repos: dict[str, HubRepo] = {}
        self.requests: list[dict] = []
        self.sent: dict[str, int] = {}
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_HEAD(self):  # noqa: N802
                server._handle(self, body=False)

            def do_GET(self):  # noqa: N802
                server._handle(self, body=True)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]

    # --- setup ---------------------------------------------------------------------------------
    def serve(self, path: str, behaviour: Behaviour) -> str:
        self.paths[path] = behaviour
        return self.url(path)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def bytes_sent(self, path: str) -> int:
        return self.sent.get(path, 0)

    def count(self, path: str, method: str = "GET") -> int:
        return sum(1 for r in self.requests if r["path"] == path and r["method"] == method)

    # --- serving -------------------------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        path = h.path.split("?")[0]
        with self._lock:
            self.requests.append({"method": h.command, "path": path, "range": h.headers.get("Range"),
                                  "authorization": h.headers.get("Authorization"), "host": h.headers.get("Host")})
        m = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
        if m and path not in self.paths:
            return self._resolve(h, m.group(1), m.group(2), m.group(3))
        m = re.match(r"^/api/models/([^/]+/[^/]+)/(revision|tree)/([^/]+)/?$", path)
        if m:
            return self._api(h, m.group(1), m.group(2))
        b = self.paths.get(path)
        if b is None:
            return self._status(h, 404)
        with self._lock:
            status = b.statuses.pop(0) if b.statuses else None
            cut = b.cuts.pop(0) if b.cuts else None
        if status is not None:
            return self._status(h, status)
        if b.redirect:
            h.send_response(302)
            h.send_header("Location", b.redirect)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        start, code = 0, 200
        ranged = re.match(r"bytes=(\d+)-$", h.headers.get("Range") or "")
        if ranged and b.ranges:
            start, code = int(ranged.group(1)), 206
            if start >= len(b.data):
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{len(b.data)}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
        chunk = b.data[start:]
        h.send_response(code)
        h.send_header("Content-Length", str(len(chunk) + b.short_by))
        h.send_header("Accept-Ranges", "bytes" if b.ranges else "none")
        if code == 206:
            h.send_header("Content-Range", f"bytes {start}-{len(b.data) - 1}/{len(b.data)}")
        h.end_headers()
        if not body:
            return
        if cut is not None:
            chunk = chunk[: max(0, cut - start)]
        self._send(h, path, chunk, b.trickle_s)
        if cut is not None or b.short_by:
            h.close_connection = True
            try:
                h.wfile.flush()
                h.connection.shutdown(2)  # cut, as a dropped connection would
            except OSError:
                pass

    def _send(self, h, path: str, data: bytes, trickle_s: float | None) -> None:
        step = 1024 if trickle_s else 1 << 20
        for i in range(0, len(data), step):
            piece = data[i:i + step]
            try:
                h.wfile.write(piece)
            except (BrokenPipeError, ConnectionResetError):
                return
            with self._lock:
                self.sent[path] = self.sent.get(path, 0) + len(piece)
            if trickle_s:
                time.sleep(trickle_s)

    def _status(self, h, code: int, headers: dict | None = None) -> None:
        h.send_response(code)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", "0")
        h.end_headers()

    def _denied(self, h, repo: str) -> bool:
        r = self.repos.get(repo)
        if r is None:
            self._status(h, 401, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"})
            return True
        auth = h.headers.get("Authorization")
        if r.gated_token is not None and auth != f"Bearer {r.gated_token}":
            self._status(h, 401 if auth is None else 403, {"X-Error-Code": "GatedRepo",
                                                           "X-Error-Message": "Access to model is restricted"})
            return True
        return False

    def _api(self, h, repo: str, kind: str) -> None:
        """The Hub API's repo info (the commit a revision is at) and tree listing (with each large
        file's LFS sha256), which huggingface_hub's snapshot_download reads."""
        if self._denied(h, repo):
            return
        files = self.repos[repo].files
        if kind == "revision":
            body = {"id": repo, "sha": self.repos[repo].commit, "siblings": [{"rfilename": f} for f in files]}
        else:
            body = [{"type": "file", "path": f, "size": len(d), "oid": hashlib.sha1(d).hexdigest(),
                     "lfs": {"oid": hashlib.sha256(d).hexdigest(), "size": len(d), "pointerSize": 130}}
                    for f, d in files.items()]
        data = json.dumps(body).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _resolve(self, h, repo: str, revision: str, file: str) -> None:
        """The Hub's /resolve/: errors with X-Error-Code, or a 302 to the CDN with the file's metadata."""
        if self._denied(h, repo):
            return
        r = self.repos[repo]
        if file not in r.files:
            return self._status(h, 404, {"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found"})
        data = r.files[file]
        digest = hashlib.sha256(data).hexdigest()
        cdn = f"/cdn/{digest}"
        self.paths.setdefault(cdn, Behaviour(data=data))
        # "localhost" is another host than the endpoint's 127.0.0.1: like the Hub's CDN, so the
        # client takes the metadata from this response and must not send its token there.
        self._status(h, 302, {"Location": self.url(cdn, host="localhost"), "X-Linked-Etag": f'"{digest}"',
                              "X-Linked-Size": str(len(data)), "X-Repo-Commit": r.commit, "ETag": '"gitsha"'})

    def __enter__(self) -> FaultServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class CountingProxy:
    """A forward HTTP proxy on loopback that counts what passes through it (HTTP_PROXY)."""

    def __init__(self):
        import urllib.request

        self.requests: list[str] = []
        proxy = self
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the proxy itself goes direct

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802
                proxy.requests.append(self.path)
                req = urllib.request.Request(self.path, headers={k: v for k, v in self.headers.items()
                                                                 if k.lower() not in ("proxy-connection", "host")})
                try:
                    with opener.open(req, timeout=30) as upstream:
                        data = upstream.read()
                        self.send_response(upstream.status)
                        for k, v in upstream.headers.items():
                            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                                self.send_header(k, v)
                except urllib.error.HTTPError as err:
                    data = b""
                    self.send_response(err.code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> CountingProxy:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def payload(size: int, seed: int = 1) -> bytes:
    """Deterministic test bytes (a GGUF header first, so it passes as a model file)."""
    import random

    rng = random.Random(seed)
    return b"GGUF\x03\x00\x00\x00" + rng.randbytes(size - 8)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
