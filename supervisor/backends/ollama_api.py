"""A small client for the parts of Ollama's HTTP API farmhand uses (docs/api.md upstream).

    GET  /api/version          is it Ollama, which version
    GET  /api/tags             the models in its store (name -> manifest digest)
    GET  /api/ps               the models loaded now
    POST /api/pull             NDJSON stream: "pulling manifest", "pulling <digest>" with
                               total/completed, "verifying sha256 digest", "writing manifest",
                               "success"; or an {"error": ...} line (HTTP 200) / JSON body (4xx/5xx)
    HEAD /api/blobs/sha256:X   200 when the blob is there, 404 when not
    POST /api/blobs/sha256:X   the file as the body: 201, or 400 on a digest mismatch
    POST /api/create           {"model", "files": {name: digest}, "template", "parameters"}
    POST /api/copy, DELETE /api/delete
    POST /api/generate         {"model"} with no prompt loads the model and answers done_reason "load"

Every failure is an OllamaError naming the server and the model.
"""

from __future__ import annotations

import http.client
import json
import os
from pathlib import Path
from urllib.parse import urlparse

from ..errors import FarmhandError
from ..ports import LOOPBACK
from ..sources.ollama import DEFAULT_NAMESPACE, DEFAULT_REGISTRY, parse_name, short_name  # noqa: F401 - Ollama's names
from . import base

UPLOAD_BLOCK = 1 << 20


class OllamaError(FarmhandError):
    pass


class NotAnswering(OllamaError, base.NotAnswering):
    pass


class OllamaAPI:
    def __init__(self, base_url: str, timeout: float = 5.0):
        self.base = base_url.rstrip("/")
        parts = urlparse(self.base)
        self.host, self.port = parts.hostname or LOOPBACK, parts.port or 11434
        self.timeout = timeout

    # --- plumbing -------------------------------------------------------------------------------
    def _conn(self, timeout: float | None = None) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout or self.timeout,
                                          blocksize=UPLOAD_BLOCK)

    def _request(self, method: str, path: str, body: dict | None = None, timeout: float | None = None):
        conn = self._conn(timeout)
        try:
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
            resp = conn.getresponse()
            return resp.status, resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise NotAnswering(f"ollama at {self.base} does not answer {method} {path} ({exc})") from None
        finally:
            conn.close()

    def _json(self, method: str, path: str, body: dict | None = None, timeout: float | None = None) -> dict:
        status, data = self._request(method, path, body, timeout)
        if status >= 400:
            raise OllamaError(f"ollama at {self.base}: {method} {path} answered {status}: {_error_of(data)}")
        try:
            return json.loads(data or b"{}")
        except ValueError:
            raise OllamaError(f"ollama at {self.base}: {method} {path} did not answer JSON") from None

    def _stream(self, path: str, body: dict, what: str, on_line, timeout: float = 600.0) -> None:
        """POST and read the NDJSON progress stream to its end; an error line or status raises."""
        conn = self._conn(timeout)
        try:
            conn.request("POST", path, body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            if resp.status >= 400:
                raise OllamaError(f"{what} failed: {_error_of(resp.read())} (ollama at {self.base}, HTTP {resp.status})")
            last = None
            for raw in resp:
                if not raw.strip():
                    continue
                try:
                    line = json.loads(raw)
                except ValueError:
                    continue
                if "error" in line:
                    raise OllamaError(f"{what} failed: {line['error']} (ollama at {self.base})")
                last = line
                on_line(line)
            if not last or last.get("status") != "success":
                raise OllamaError(f"{what} failed: the stream ended before \"success\" (ollama at {self.base})")
        except (OSError, http.client.HTTPException) as exc:
            raise NotAnswering(f"{what} failed: ollama at {self.base} stopped answering ({exc})") from None
        finally:
            conn.close()

    # --- questions ------------------------------------------------------------------------------
    def version(self) -> str | None:
        """The server's version, or None when nothing (or not Ollama) answers."""
        try:
            status, data = self._request("GET", "/api/version", timeout=min(self.timeout, 1.0))
            return json.loads(data).get("version") if status == 200 else None
        except (NotAnswering, ValueError, AttributeError):
            return None

    def tags(self) -> dict[str, str]:
        """{short name: manifest digest} of the models in the store."""
        models = self._json("GET", "/api/tags").get("models") or []
        return {short_name(m.get("name") or m.get("model", "")): m.get("digest", "") for m in models}

    def loaded(self) -> set[str]:
        return {short_name(m.get("name") or m.get("model", "")) for m in self._json("GET", "/api/ps").get("models") or []}

    # --- changes --------------------------------------------------------------------------------
    def pull(self, name: str, *, insecure: bool, report, label: str) -> None:
        """POST /api/pull, its per-layer progress shown as one transfer."""
        layers: dict[str, tuple[int, int]] = {}

        def on_line(line: dict) -> None:
            if line.get("digest") and line.get("total"):
                layers[line["digest"]] = (int(line.get("completed") or 0), int(line["total"]))
                done, total = sum(c for c, _ in layers.values()), sum(t for _, t in layers.values())
                report.transfer(label, done, total)

        self._stream("/api/pull", {"model": name, "insecure": insecure, "stream": True}, f"pulling {name}", on_line)
        if layers:
            total = sum(t for _, t in layers.values())
            report.transfer(label, total, total, finished=True)

    def has_blob(self, digest: str) -> bool:
        status, _ = self._request("HEAD", f"/api/blobs/sha256:{digest}")
        return status == 200

    def push_blob(self, path: Path, digest: str, *, report, label: str) -> None:
        """POST the file as blob sha256:<digest> (the server checks the digest: 400 on a mismatch),
        in 1 MiB writes (measured on loopback: as fast as sendfile(2) here, and simpler)."""
        size = os.path.getsize(path)
        conn = self._conn(timeout=600.0)
        try:
            conn.putrequest("POST", f"/api/blobs/sha256:{digest}", skip_accept_encoding=True)
            conn.putheader("Content-Length", str(size))
            conn.putheader("Content-Type", "application/octet-stream")
            conn.endheaders()
            sent = 0
            with open(path, "rb") as fh:
                while sent < size:
                    block = fh.read(min(UPLOAD_BLOCK, size - sent))
                    if not block:
                        raise OSError(f"the file ended after {sent} of {size} bytes (changed while uploading?)")
                    conn.sock.sendall(block)
                    sent += len(block)
                    report.transfer(label, sent, size)
            resp = conn.getresponse()
            data = resp.read()
            report.transfer(label, size, size, finished=True)
        except (OSError, http.client.HTTPException) as exc:
            raise NotAnswering(f"uploading {path.name} failed: ollama at {self.base} stopped answering ({exc})") from None
        finally:
            conn.close()
        if resp.status not in (200, 201):
            raise OllamaError(f"uploading {path.name} as sha256:{digest[:12]}… failed: {_error_of(data)} "
                              f"(ollama at {self.base}, HTTP {resp.status})")

    def create(self, name: str, files: dict[str, str], template: str | None, parameters: dict | None) -> None:
        body: dict = {"model": name, "files": files, "stream": True}
        if template is not None:
            body["template"] = template
        if parameters:
            body["parameters"] = parameters
        self._stream("/api/create", body, f"creating {name}", lambda line: None)

    def copy(self, source: str, destination: str) -> None:
        self._json("POST", "/api/copy", {"source": source, "destination": destination})

    def delete(self, name: str) -> None:
        status, data = self._request("DELETE", "/api/delete", {"model": name})
        if status not in (200, 404):
            raise OllamaError(f"ollama at {self.base}: deleting {name} answered {status}: {_error_of(data)}")

    def load(self, name: str, keep_alive: int | str | None = None) -> None:
        """Load the model into memory now (a generate request without a prompt)."""
        body: dict = {"model": name, "stream": False}
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        status, data = self._request("POST", "/api/generate", body, timeout=600.0)
        if status >= 400:
            raise OllamaError(f"loading {name} into memory failed: {_error_of(data)} (ollama at {self.base}, "
                              f"HTTP {status})")
        try:
            done = json.loads(data).get("done")
        except (ValueError, AttributeError):
            done = False
        if not done:
            raise OllamaError(f"loading {name} into memory did not finish (ollama at {self.base})")


def _error_of(data: bytes) -> str:
    try:
        return str(json.loads(data).get("error") or data[:200].decode(errors="replace"))
    except (ValueError, AttributeError):
        return data[:200].decode(errors="replace").strip() or "no detail"
