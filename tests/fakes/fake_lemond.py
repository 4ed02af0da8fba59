#!/usr/bin/env python3
"""A stand-in for Lemonade's `lemond` (it cannot be downloaded here, and this machine has no
NPU): the documented server API, standard library only, shipped by lemonade_release.py in a
tarball with the embeddable release's layout (lemond, lemonade, resources/server_models.json).

What it keeps of Lemonade: LEMONADE_HOST / LEMONADE_PORT / LEMONADE_CACHE_DIR, models
downloaded from the Hugging Face endpoint (HF_ENDPOINT) into HF_HOME; the registry in
resources/server_models.json; GET /live, /api/v1/health (version, all_models_loaded with
device and recipe), GET /api/v1/models (downloaded models), POST /api/v1/pull (registered
names; stream=true answers SSE progress/complete/error events), POST /api/v1/load, and
OpenAI chat under /api/v1/chat/completions (loading the model on first use). What it fakes:
every recipe, `flm` included, runs on the real llama-server (FAKE_LEMONADE_RUNNER) on the
model's GGUF: there is no NPU here, the answers are real.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

VERSION = "11.8.0"
HERE = Path(__file__).resolve().parent
REGISTRY = json.loads((HERE / "resources" / "server_models.json").read_text())
CACHE = Path(os.environ.get("LEMONADE_CACHE_DIR") or Path.home() / ".cache" / "lemonade")
HF_HOME = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
DEVICE = {"flm": "npu", "llamacpp": "gpu"}


def downloaded() -> dict:
    path = CACHE / "fake_downloaded.json"
    return json.loads(path.read_text()) if path.exists() else {}


def model_file(checkpoint: str) -> Path:
    repo, _, filename = checkpoint.partition(":")
    return HF_HOME / "hub" / ("models--" + repo.replace("/", "--")) / "snapshots" / "main" / filename


class State:
    lock = threading.Lock()  # guards `loaded`; never held while a model loads
    loading = threading.Lock()  # one load at a time
    loaded: dict[str, dict] = {}  # name -> {"proc", "port", "checkpoint", "recipe"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pull(name: str, emit) -> None:
    entry = REGISTRY.get(name)
    if entry is None:
        raise ValueError(f"{name} is not a registered model (known: {', '.join(sorted(REGISTRY))})")
    repo, _, filename = entry["checkpoint"].partition(":")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    target = model_file(entry["checkpoint"])
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".partial")
    with urllib.request.urlopen(f"{endpoint}/{repo}/resolve/main/{filename}", timeout=60) as resp, \
            open(part, "wb") as out:
        total, done = int(resp.headers.get("Content-Length") or 0), 0
        while True:
            block = resp.read(1 << 22)
            if not block:
                break
            out.write(block)
            done += len(block)
            emit("progress", {"file": filename, "file_index": 1, "total_files": 1, "bytes_downloaded": done,
                              "bytes_total": total, "percent": int(done * 100 / total) if total else 0})
    part.rename(target)
    CACHE.mkdir(parents=True, exist_ok=True)
    record = downloaded() | {name: entry}
    (CACHE / "fake_downloaded.json").write_text(json.dumps(record))
    emit("complete", {"file_index": 1, "total_files": 1, "percent": 100})


def load(name: str) -> dict:
    with State.loading:
        with State.lock:
            if name in State.loaded:
                return State.loaded[name]
        entry = downloaded().get(name)
        if entry is None:
            raise ValueError(f"{name} is not downloaded; pull it first")
        port = free_port()
        argv = [os.environ["FAKE_LEMONADE_RUNNER"], "-m", str(model_file(entry["checkpoint"])), "--host", "127.0.0.1",
                "--port", str(port), "--no-webui"]
        if entry.get("chat_template"):
            argv += ["--no-jinja", "--chat-template", entry["chat_template"]]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).status == 200:
                    break
            except (OSError, urllib.error.URLError):
                time.sleep(0.05)
        with State.lock:
            State.loaded[name] = {"proc": proc, "port": port, "checkpoint": entry["checkpoint"],
                                  "recipe": entry["recipe"]}
            return State.loaded[name]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _path(self) -> str:
        path = self.path.split("?")[0]
        for prefix in ("/api/v1", "/api/v0", "/v1"):
            if path.startswith(prefix + "/"):
                return path[len(prefix):]
        return path

    def do_GET(self):  # noqa: N802
        path = self._path()
        if path == "/live":
            return self._send(200, {"status": "ok"})
        if path == "/health":
            with State.lock:
                loaded = [{"model_name": n, "checkpoint": m["checkpoint"], "recipe": m["recipe"], "type": "llm",
                           "device": DEVICE.get(m["recipe"], "cpu"), "backend_url": f"http://127.0.0.1:{m['port']}/v1"}
                          for n, m in State.loaded.items()]
            return self._send(200, {"status": "ok", "version": VERSION, "all_models_loaded": loaded,
                                    "model_loaded": loaded[-1]["model_name"] if loaded else None})
        if path == "/models":
            return self._send(200, {"object": "list", "data": [
                {"id": n, "object": "model", "owned_by": "lemonade", "checkpoint": e["checkpoint"],
                 "recipe": e["recipe"], "downloaded": True} for n, e in downloaded().items()]})
        self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        path = self._path()
        if path == "/pull":
            name = body.get("model_name", "")
            if not body.get("stream"):
                try:
                    pull(name, lambda *_: None)
                except ValueError as exc:
                    return self._send(200, {"status": "error", "message": str(exc)})
                return self._send(200, {"status": "success", "message": f"Installed model: {name}"})
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True

            def emit(event: str, data: dict) -> None:
                self.wfile.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())
                self.wfile.flush()

            try:
                pull(name, emit)
            except (ValueError, OSError) as exc:
                emit("error", {"error": str(exc)})
            return
        if path == "/load":
            try:
                load(body.get("model_name", ""))
            except ValueError as exc:
                return self._send(200, {"status": "error", "message": str(exc)})
            return self._send(200, {"status": "success", "message": f"Loaded model: {body.get('model_name')}"})
        if path == "/chat/completions":
            try:
                model = load(body.get("model", ""))
            except ValueError as exc:
                return self._send(404, {"error": {"message": str(exc), "type": "not_found"}})
            req = urllib.request.Request(f"http://127.0.0.1:{model['port']}/v1/chat/completions",
                                         data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=300) as resp:
                answer = json.loads(resp.read())
            answer["model"] = body.get("model")
            return self._send(200, answer)
        self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

    def log_message(self, *a):
        pass


def main() -> None:
    if sys.argv[1:2] == ["--version"]:
        print(f"lemond version {VERSION}")
        return
    host = os.environ.get("LEMONADE_HOST", "localhost")
    port = int(os.environ.get("LEMONADE_PORT", "13305"))
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True

    def stop(*_):
        with State.lock:
            for m in State.loaded.values():
                m["proc"].terminate()
            for m in State.loaded.values():
                m["proc"].wait()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    print(f"lemond {VERSION} listening on {host}:{port}; cache {CACHE}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
