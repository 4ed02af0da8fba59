#!/usr/bin/env python3
"""A fake `ollama` for tests: the parts of Ollama's CLI and HTTP API that farmhand uses,
behaving as upstream's docs/api.md and server/routes.go describe. A test tool, not a product.

    ollama --version          "ollama version is X" (the client's version on a Warning line
                              when no server answers, as upstream prints it)
    ollama serve              OLLAMA_HOST, OLLAMA_MODELS, OLLAMA_ORIGINS, OLLAMA_KEEP_ALIVE,
                              OLLAMA_MAX_LOADED_MODELS, OLLAMA_CONTEXT_LENGTH

The store has upstream's layout (blobs/sha256-<hex>, manifests/<host>/<ns>/<model>/<tag>).
/api/pull speaks the registry protocol (GET /v2/<ns>/<model>/manifests/<tag>, then each blob)
to the host the name names, over http only with "insecure": true, with upstream's stream of
statuses. A loaded model runs in a runner child process, as upstream's does: the real
llama-server from lib/ollama/ beside bin/, serving the blob; chat requests are forwarded to
it, rendered with the model's template (matched to llama.cpp's built-in of the same format),
or raw like upstream's default `{{ .Prompt }}` when the model has none.

Stdlib only: packaged as bin/ollama in a test-built release archive (tests/fakes/ollama_release.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

VERSION = "0.0.0-fake"  # replaced when the release archive is built
DEFAULT_HOST, DEFAULT_NS, DEFAULT_TAG = "registry.ollama.ai", "library", "latest"
MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}$")
DIGEST = re.compile(r"^sha256[:-]([0-9a-f]{64})$")
TEMPLATE_FORMATS = {"<start_of_turn>": "gemma", "<|im_start|>": "chatml", "<|start_header_id|>": "llama3"}


def now() -> str:
    return datetime.now(timezone.utc).isoformat()


# --- names and the store --------------------------------------------------------------------------
def parse_name(name: str) -> tuple[str, str, str, str]:
    rest, tag = name, DEFAULT_TAG
    last = rest.rsplit("/", 1)[-1]
    if ":" in last:
        rest, tag = rest[: len(rest) - len(last)] + last.split(":", 1)[0], last.split(":", 1)[1]
    parts = rest.split("/")
    model = parts[-1]
    ns = parts[-2] if len(parts) >= 2 else DEFAULT_NS
    host = "/".join(parts[:-2]) if len(parts) >= 3 else DEFAULT_HOST
    return host, ns, model, tag


def valid(name: str) -> bool:
    host, ns, model, tag = parse_name(name)
    return bool(PART.match(model) and PART.match(tag) and re.match(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$", ns) and host)


def display(name: str) -> str:
    host, ns, model, tag = parse_name(name)
    prefix = "" if host == DEFAULT_HOST else f"{host}/"
    prefix += "" if (host, ns) == (DEFAULT_HOST, DEFAULT_NS) else f"{ns}/"
    return f"{prefix}{model}:{tag}"


class Store:
    def __init__(self, root: Path):
        self.root = root
        self.blobs = root / "blobs"
        self.manifests = root / "manifests"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.manifests.mkdir(parents=True, exist_ok=True)

    def blob(self, digest: str) -> Path:
        return self.blobs / ("sha256-" + DIGEST.match(digest).group(1))

    def manifest_path(self, name: str) -> Path:
        host, ns, model, tag = parse_name(name)
        return self.manifests / host / ns / model / tag

    def manifest(self, name: str) -> dict | None:
        try:
            return json.loads(self.manifest_path(name).read_bytes())
        except (OSError, ValueError):
            return None

    def names(self) -> list[str]:
        return sorted(display("/".join(p.relative_to(self.manifests).parts[:3]) + ":" + p.name)
                      for p in self.manifests.glob("*/*/*/*") if p.is_file())

    def write_blob(self, data: bytes) -> dict:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = self.blob(digest)
        if not path.exists():
            tmp = path.with_name(path.name + "-partial")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return {"digest": digest, "size": len(data)}

    def write_manifest(self, name: str, manifest: dict) -> None:
        path = self.manifest_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(json.dumps(manifest).encode())


def gguf_architecture(path: Path) -> str | None:
    """general.architecture from a GGUF header (the first string KV that names it)."""
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    if head[:4] != b"GGUF":
        return None
    i = head.find(b"general.architecture")
    if i < 0:
        return None
    i += len(b"general.architecture") + 4
    size = int.from_bytes(head[i:i + 8], "little")
    return head[i + 8:i + 8 + size].decode(errors="replace")


# --- runners --------------------------------------------------------------------------------------
class Runner:
    def __init__(self, name: str, blob: Path, template: str | None, ctx: int):
        self.name, self.template = name, template
        binary = Path(__file__).resolve().parent.parent / "lib" / "ollama" / "llama-server"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        argv = [str(binary), "-m", str(blob), "--host", "127.0.0.1", "--port", str(self.port), "-c", str(ctx),
                "--no-webui"]
        fmt = next((f for marker, f in TEMPLATE_FORMATS.items() if template and marker in template), None)
        if fmt:
            argv += ["--no-jinja", "--chat-template", fmt]
        # Same session as `ollama serve`, like upstream's runners: stopping the group stops them.
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     stdin=subprocess.DEVNULL)
        self.expires: float | None = None
        self.started = time.time()
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama runner process has terminated: exit status {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("timed out waiting for llama runner to start")

    def post(self, path: str, body: dict) -> dict:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=300) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def keep_alive_seconds(value) -> float | None:
    """None: forever. Upstream accepts a number of seconds or a duration ("5m", "1h", "-1")."""
    if value is None or value == "":
        return 300.0
    if isinstance(value, (int, float)):
        return None if value < 0 else float(value)
    m = re.fullmatch(r"(-?\d+(?:\.\d+)?)(ms|s|m|h)?", str(value).strip())
    if not m:
        return 300.0
    n = float(m.group(1))
    return None if n < 0 else n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


class Server:
    def __init__(self):
        self.store = Store(Path(os.environ.get("OLLAMA_MODELS") or Path.home() / ".ollama" / "models"))
        self.runners: dict[str, Runner] = {}
        self.lock = threading.Lock()
        self.max_loaded = int(os.environ.get("OLLAMA_MAX_LOADED_MODELS") or 3)
        self.default_keep = os.environ.get("OLLAMA_KEEP_ALIVE")
        self.ctx = int(os.environ.get("OLLAMA_CONTEXT_LENGTH") or 4096)
        origins = [o for o in (os.environ.get("OLLAMA_ORIGINS") or "").split(",") if o]
        for host in ("localhost", "127.0.0.1", "0.0.0.0"):
            origins += [f"http://{host}", f"https://{host}", f"http://{host}:*", f"https://{host}:*"]
        self.origins = origins + ["app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*"]

    def origin_allowed(self, origin: str) -> bool:
        return any(re.fullmatch(re.escape(o).replace(r"\*", ".*"), origin) for o in self.origins)

    def load(self, name: str, keep_alive=None) -> Runner:
        name = display(name)
        with self.lock:
            runner = self.runners.get(name)
            if runner is None or runner.proc.poll() is not None:
                manifest = self.store.manifest(name)
                layers = {layer["mediaType"]: layer for layer in manifest["layers"]}
                model = layers["application/vnd.ollama.image.model"]
                template_layer = layers.get("application/vnd.ollama.image.template")
                template = self.store.blob(template_layer["digest"]).read_text() if template_layer else None
                while len(self.runners) >= self.max_loaded:  # upstream unloads the least recently used
                    oldest = min(self.runners, key=lambda n: self.runners[n].started)
                    self.runners.pop(oldest).stop()
                runner = Runner(name, self.store.blob(model["digest"]), template, self.ctx)
                self.runners[name] = runner
            seconds = keep_alive_seconds(keep_alive if keep_alive is not None else self.default_keep)
            runner.expires = None if seconds is None else time.time() + seconds
            return runner

    def expire(self) -> None:
        while True:
            time.sleep(0.5)
            with self.lock:
                for name, runner in list(self.runners.items()):
                    if runner.expires is not None and runner.expires <= time.time():
                        self.runners.pop(name).stop()

    def shutdown(self, *_):
        for runner in list(self.runners.values()):
            runner.stop()
        os._exit(0)


SERVER: Server | None = None


# --- HTTP -----------------------------------------------------------------------------------------
class Handler(BaseHTTPRequestHandler):
    server_version = "fake-ollama"

    def log_message(self, *args):
        pass

    def _json(self, code: int, body) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _empty(self, code: int) -> None:
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _body(self) -> dict | None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            self._json(400, {"error": "missing request body"})
            return None
        try:
            return json.loads(raw)
        except ValueError as exc:
            self._json(400, {"error": str(exc)})
            return None

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.end_headers()
        self.close_connection = True

    def _line(self, obj: dict) -> None:
        self.wfile.write(json.dumps(obj).encode() + b"\n")
        self.wfile.flush()

    def _cors(self) -> bool:
        origin = self.headers.get("Origin")
        if origin and not SERVER.origin_allowed(origin):
            self._empty(403)
            return False
        if origin:
            self._origin = origin
        return True

    def end_headers(self):
        if getattr(self, "_origin", None):
            self.send_header("Access-Control-Allow-Origin", self._origin)
        super().end_headers()

    # routes
    def do_HEAD(self):  # noqa: N802
        self.do_GET()

    def do_GET(self):  # noqa: N802
        if not self._cors():
            return
        path = self.path.split("?")[0]
        if path == "/":
            data = b"Ollama is running"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(data)
        elif path == "/api/version":
            self._json(200, {"version": VERSION})
        elif path == "/api/tags":
            self._json(200, {"models": [self._listing(n) for n in SERVER.store.names()]})
        elif path == "/api/ps":
            with SERVER.lock:
                running = [(n, r) for n, r in SERVER.runners.items() if r.proc.poll() is None]
            self._json(200, {"models": [self._listing(n) | {
                "expires_at": datetime.fromtimestamp(r.expires or 4102444800, timezone.utc).isoformat(),
                "size_vram": 0} for n, r in running]})
        elif path.startswith("/api/blobs/") and self.command == "HEAD":
            digest = path[len("/api/blobs/"):]
            if not DIGEST.match(digest):
                self._json(400, {"error": "invalid digest format"})
                return
            self._empty(200 if SERVER.store.blob(digest).is_file() else 404)
        else:
            self._json(404, {"error": "404 page not found"})

    def _listing(self, name: str) -> dict:
        raw = SERVER.store.manifest_path(name).read_bytes()
        manifest = json.loads(raw)
        return {"name": name, "model": name, "modified_at": now(),
                "size": sum(layer["size"] for layer in manifest["layers"]),
                "digest": hashlib.sha256(raw).hexdigest(),
                "details": {"parent_model": "", "format": "gguf", "family": manifest.get("_family", ""),
                            "families": None, "parameter_size": "", "quantization_level": ""}}

    def do_DELETE(self):  # noqa: N802
        if not self._cors():
            return
        if self.path != "/api/delete":
            self._json(404, {"error": "404 page not found"})
            return
        body = self._body()
        if body is None:
            return
        name = body.get("model") or body.get("name") or ""
        path = SERVER.store.manifest_path(name)
        if not path.is_file():
            self._json(404, {"error": f"model '{name}' not found"})
            return
        manifest = json.loads(path.read_bytes())
        path.unlink()
        # Upstream removes the deleted model's layers that no other model uses (nothing else).
        used = set()
        for other in SERVER.store.names():
            m = SERVER.store.manifest(other)
            used.update(layer["digest"] for layer in m["layers"] + [m["config"]])
        for layer in manifest["layers"] + [manifest["config"]]:
            if layer["digest"] not in used:
                SERVER.store.blob(layer["digest"]).unlink(missing_ok=True)
        self._empty(200)

    def do_POST(self):  # noqa: N802
        if not self._cors():
            return
        path = self.path.split("?")[0]
        if path.startswith("/api/blobs/"):
            return self._push_blob(path[len("/api/blobs/"):])
        handler = {"/api/pull": self._pull, "/api/create": self._create, "/api/copy": self._copy, "/api/show": self._show,
                   "/api/generate": self._generate, "/v1/chat/completions": self._chat}.get(path)
        if handler is None:
            self._json(404, {"error": "404 page not found"})
            return
        body = self._body()
        if body is not None:
            handler(body)

    def _push_blob(self, digest: str) -> None:
        if not DIGEST.match(digest):
            self._json(400, {"error": "invalid digest format"})
            return
        target = SERVER.store.blob(digest)
        length = self.headers.get("Content-Length")
        if target.is_file():
            self.rfile.read(int(length or 0))
            self._empty(200)
            return
        if length is None:
            self._json(411, {"error": "length required"})
            return
        hasher, remaining = hashlib.sha256(), int(length)
        tmp = target.with_name(target.name + f"-upload-{threading.get_ident()}")
        with open(tmp, "wb") as fh:
            while remaining:
                block = self.rfile.read(min(remaining, 1 << 20))
                if not block:
                    break
                hasher.update(block)
                fh.write(block)
                remaining -= len(block)
        got = "sha256:" + hasher.hexdigest()
        if remaining or got != digest.replace("sha256-", "sha256:"):
            tmp.unlink()
            self._json(400, {"error": f"digest mismatch, expected {digest!r}, got {got!r}"})
            return
        os.replace(tmp, target)
        self._empty(201)

    def _pull(self, body: dict) -> None:
        name = body.get("model") or body.get("name") or ""
        if not valid(name):
            self._json(400, {"error": "invalid model name"})
            return
        insecure = bool(body.get("insecure"))
        host, ns, model, tag = parse_name(name)
        scheme = "http" if insecure else "https"
        self._start_stream()
        self._line({"status": "pulling manifest"})
        url = f"{scheme}://{host}/v2/{ns}/{model}/manifests/{tag}"
        try:
            req = urllib.request.Request(url, headers={"Accept": MANIFEST_TYPE})
            with urllib.request.urlopen(req, timeout=10) as r:
                raw = r.read()
            manifest = json.loads(raw)
        except urllib.error.HTTPError as exc:
            detail = "file does not exist" if exc.code == 404 else f"{exc.code} {exc.reason}"
            self._line({"error": f"pull model manifest: {detail}"})
            return
        except (urllib.error.URLError, OSError, ValueError) as exc:
            self._line({"error": f"pull model manifest: Get \"{url}\": {getattr(exc, 'reason', exc)}"})
            return
        for layer in manifest["layers"] + [manifest["config"]]:
            digest, size = layer["digest"], layer["size"]
            status = f"pulling {digest[7:19]}"
            target = SERVER.store.blob(digest)
            if target.is_file():
                self._line({"status": status, "digest": digest, "total": size, "completed": size})
                continue
            self._line({"status": status, "digest": digest, "total": size})
            partial = target.with_name(target.name + "-partial")
            hasher, done = hashlib.sha256(), 0
            try:
                with urllib.request.urlopen(f"{scheme}://{host}/v2/{ns}/{model}/blobs/{digest}", timeout=30) as r, \
                        open(partial, "wb") as fh:
                    while block := r.read(1 << 20):
                        fh.write(block)
                        hasher.update(block)
                        done += len(block)
                        self._line({"status": status, "digest": digest, "total": size, "completed": done})
            except (urllib.error.URLError, OSError) as exc:
                self._line({"error": f"{digest}: {getattr(exc, 'reason', exc)}"})
                return
            got = "sha256:" + hasher.hexdigest()
            if got != digest:
                partial.unlink()
                self._line({"error": f"digest mismatch, file must be downloaded again: want {digest}, got {got}"})
                return
            os.replace(partial, target)
        self._line({"status": "verifying sha256 digest"})
        self._line({"status": "writing manifest"})
        SERVER.store.write_manifest(name, manifest)
        self._line({"status": "success"})

    def _create(self, body: dict) -> None:
        name = body.get("model") or body.get("name") or ""
        files = body.get("files") or {}
        if not valid(name):
            self._json(400, {"error": "invalid model name"})
            return
        if not files and not body.get("from"):
            self._json(400, {"error": "neither 'from' or 'files' was specified"})
            return
        for file, digest in files.items():
            if not digest or not DIGEST.match(digest) or file.startswith("/") or ".." in file.split("/"):
                self._json(400, {"error": "invalid digest format" if file and not file.startswith("/")
                                 else "file path must be relative"})
                return
        self._start_stream()
        self._line({"status": "parsing GGUF"})
        layers = []
        family = ""
        for digest in files.values():
            blob = SERVER.store.blob(digest)
            if not blob.is_file():
                self._line({"error": f"open {blob}: no such file or directory"})
                return
            arch = gguf_architecture(blob)
            if arch is None:
                self._line({"error": "invalid file magic"})
                return
            family = arch
            self._line({"status": f"using existing layer {digest}"})
            layers.append({"mediaType": "application/vnd.ollama.image.model", "digest": digest,
                           "size": blob.stat().st_size})
        if body.get("template"):
            layer = SERVER.store.write_blob(body["template"].encode())
            self._line({"status": f"creating new layer {layer['digest']}"})
            layers.append({"mediaType": "application/vnd.ollama.image.template"} | layer)
        if body.get("parameters"):
            layer = SERVER.store.write_blob(json.dumps(body["parameters"]).encode())
            self._line({"status": f"creating new layer {layer['digest']}"})
            layers.append({"mediaType": "application/vnd.ollama.image.params"} | layer)
        config = SERVER.store.write_blob(json.dumps({"model_format": "gguf", "model_family": family,
                                                     "os": "linux", "architecture": "amd64"}).encode())
        self._line({"status": "writing manifest"})
        SERVER.store.write_manifest(name, {"schemaVersion": 2, "mediaType": MANIFEST_TYPE, "_family": family,
                                           "config": {"mediaType": "application/vnd.docker.container.image.v1+json"}
                                           | config, "layers": layers})
        self._line({"status": "success"})

    def _copy(self, body: dict) -> None:
        source, dest = body.get("source", ""), body.get("destination", "")
        manifest = SERVER.store.manifest(source)
        if manifest is None:
            self._json(404, {"error": f"model '{source}' not found"})
            return
        if not valid(dest):
            self._json(400, {"error": "invalid destination name"})
            return
        SERVER.store.write_manifest(dest, manifest)
        self._empty(200)

    def _show(self, body: dict) -> None:
        name = body.get("model") or body.get("name") or ""
        manifest = SERVER.store.manifest(name)
        if manifest is None:
            self._json(404, {"error": f"model '{name}' not found"})
            return
        layers = {layer["mediaType"].rsplit(".", 1)[-1]: layer for layer in manifest["layers"]}
        template = SERVER.store.blob(layers["template"]["digest"]).read_text() if "template" in layers else ""
        params = json.loads(SERVER.store.blob(layers["params"]["digest"]).read_text()) if "params" in layers else {}
        self._json(200, {"modelfile": f"FROM {SERVER.store.blob(layers['model']['digest'])}\n",
                         "parameters": "\n".join(f"{k} {json.dumps(v)}" for k, vs in params.items()
                                                 for v in (vs if isinstance(vs, list) else [vs])),
                         "template": template, "details": {"format": "gguf", "family": manifest.get("_family", "")}})

    def _runner(self, name: str, keep_alive) -> Runner | None:
        if SERVER.store.manifest(name) is None:
            return None
        return SERVER.load(name, keep_alive)

    def _generate(self, body: dict) -> None:
        name = body.get("model", "")
        try:
            runner = self._runner(name, body.get("keep_alive"))
        except RuntimeError as exc:
            self._json(500, {"error": str(exc)})
            return
        if runner is None:
            self._json(404, {"error": f"model '{name}' not found"})
            return
        prompt = body.get("prompt") or ""
        if not prompt:
            self._json(200, {"model": name, "created_at": now(), "response": "", "done": True, "done_reason": "load"})
            return
        limit = (body.get("options") or {}).get("num_predict", 128)
        if runner.template and not body.get("raw"):  # the prompt goes through the model's template
            out = runner.post("/v1/chat/completions", {"messages": [{"role": "user", "content": prompt}],
                                                       "max_tokens": limit, "temperature": 0})
            text = out["choices"][0]["message"]["content"]
        else:
            text = runner.post("/completion", {"prompt": prompt, "n_predict": limit, "temperature": 0}).get("content", "")
        self._json(200, {"model": name, "created_at": now(), "response": text, "done": True, "done_reason": "stop"})

    def _chat(self, body: dict) -> None:
        name = body.get("model", "")
        try:
            runner = self._runner(name, None)
        except RuntimeError as exc:
            self._json(500, {"error": {"message": str(exc), "type": "api_error", "param": None, "code": None}})
            return
        if runner is None:
            self._json(404, {"error": {"message": f"model \"{name}\" not found, try pulling it first",
                                       "type": "api_error", "param": None, "code": None}})
            return
        request = dict(body, model=name, stream=False)
        if runner.template:
            answer = runner.post("/v1/chat/completions", request)
        else:  # upstream's default template is the last prompt, raw
            text = runner.post("/completion", {"prompt": body["messages"][-1]["content"],
                                               "n_predict": body.get("max_tokens") or 128}).get("content", "")
            answer = {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                      "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                   "finish_reason": "stop"}]}
        answer["model"] = name
        self._json(200, answer)


def serve() -> None:
    global SERVER
    host_port = os.environ.get("OLLAMA_HOST") or "127.0.0.1:11434"
    host_port = host_port.split("://", 1)[-1]
    host, _, port = host_port.rpartition(":")
    SERVER = Server()
    httpd = ThreadingHTTPServer((host or "127.0.0.1", int(port or 11434)), Handler)
    httpd.daemon_threads = True
    signal.signal(signal.SIGTERM, SERVER.shutdown)
    signal.signal(signal.SIGINT, SERVER.shutdown)
    threading.Thread(target=SERVER.expire, daemon=True).start()
    print(f"Listening on {host_port} (version {VERSION})", flush=True)
    httpd.serve_forever()


def version() -> None:
    host = (os.environ.get("OLLAMA_HOST") or "127.0.0.1:11434").split("://", 1)[-1]
    try:
        with urllib.request.urlopen(f"http://{host}/api/version", timeout=1) as r:
            server = json.loads(r.read()).get("version")
    except (urllib.error.URLError, OSError, ValueError):
        print("Warning: could not connect to a running Ollama instance")
        print(f"Warning: client version is {VERSION}")
        return
    print(f"ollama version is {server}")
    if server != VERSION:
        print(f"Warning: client version is {VERSION}")


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command in ("-v", "--version"):
        version()
    elif command == "serve":
        serve()
    else:
        print(f"fake ollama: unsupported command {command!r} (serve, --version)", file=sys.stderr)
        sys.exit(2)
