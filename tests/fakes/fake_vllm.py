"""A stand-in for `vllm` (vLLM cannot be downloaded or run here): the CLI and the documented
OpenAI-compatible server, standard library only, packaged as a wheel by vllm_index.py so that
farmhand's real pip install path installs it from a loopback package index.

    vllm --version
    vllm serve REPO --host H --port P --served-model-name NAME --max-model-len N
               [--revision R] [--gpu-memory-utilization F] [--tensor-parallel-size K]
               [--allowed-origins JSON] [--api-key KEY]

What it keeps of vLLM: the model is a Hugging Face repo read from HF_HOME's hub cache (with
HF_HUB_OFFLINE=1 a repo that is not there is an error, as in vLLM); one worker process per
tensor-parallel rank, in the server's session; GET /health 200 once the engine is up (503
before; FAKE_VLLM_READY_AFTER seconds, default 0, stands in for loading weights);
GET /v1/models; POST /v1/chat/completions for the served name only (404 otherwise). Generation
is done by the real llama-server (FAKE_VLLM_RUNNER) on the repo's GGUF, so answers are real.
It counts /health requests (GET /fake/probes) so a test can check the supervisor's back-off.
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

VERSION = "0.21.0"
ARCH_TEMPLATES = {"gemma3": "gemma", "gemma3_text": "gemma", "gemma": "gemma", "qwen2": "chatml", "llama": "llama3"}


def option(argv: list[str], name: str, default=None):
    return argv[argv.index(name) + 1] if name in argv else default


def snapshot_dir(repo: str, revision: str | None) -> Path:
    hub = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"
    repo_dir = hub / ("models--" + repo.replace("/", "--"))
    ref = revision or "main"
    commit = (repo_dir / "refs" / ref).read_text().strip() if (repo_dir / "refs" / ref).exists() else ref
    snap = repo_dir / "snapshots" / commit
    if not snap.is_dir():
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        why = "HF_HUB_OFFLINE=1 and it is not in the cache" if offline else "no network in this fake"
        sys.exit(f"OSError: We couldn't connect to 'https://huggingface.co' to load {repo}@{ref} ({why})")
    return snap


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int) -> None:
    """A tensor-parallel worker: holds 'GPU memory' until it is stopped."""
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    while True:
        time.sleep(3600)


def serve(argv: list[str]) -> None:
    repo = argv[0]
    host, port = option(argv, "--host", "0.0.0.0"), int(option(argv, "--port", "8000"))
    name = option(argv, "--served-model-name", repo)
    max_len = int(option(argv, "--max-model-len", "2048"))
    ranks = int(option(argv, "--tensor-parallel-size", "1"))
    snap = snapshot_dir(repo, option(argv, "--revision"))
    ggufs = sorted(snap.glob("*.gguf"))
    if not ggufs:
        sys.exit(f"ValueError: {repo}: no weights this fake can serve (it needs a .gguf in the repo)")
    config = json.loads((snap / "config.json").read_text()) if (snap / "config.json").exists() else {}
    print(f"INFO vLLM API server version {VERSION}; model={repo} served as {name}; max_model_len={max_len}",
          flush=True)

    children = [subprocess.Popen([sys.executable, __file__, "worker", str(r)]) for r in range(ranks)]
    runner_port = free_port()
    runner_argv = [os.environ["FAKE_VLLM_RUNNER"], "-m", str(ggufs[0]), "--host", "127.0.0.1", "--port",
                   str(runner_port), "-c", str(max_len), "--no-webui"]
    template = ARCH_TEMPLATES.get(str(config.get("model_type")))
    if template:
        runner_argv += ["--no-jinja", "--chat-template", template]
    children.append(subprocess.Popen(runner_argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def stop(*_):
        for c in children:
            c.terminate()
        for c in children:
            c.wait()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    started, probes = time.monotonic(), {"health": 0}
    ready_after = float(os.environ.get("FAKE_VLLM_READY_AFTER", "0"))
    origins = json.loads(option(argv, "--allowed-origins", '["*"]'))

    def runner_up() -> bool:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{runner_port}/health", timeout=1).status == 200
        except (OSError, urllib.error.URLError):
            return False

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            origin = self.headers.get("Origin")
            if origin and ("*" in origins or origin in origins):
                self.send_header("Access-Control-Allow-Origin", origin)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802
            if self.path == "/health":
                probes["health"] += 1
                up = time.monotonic() - started >= ready_after and runner_up()
                return self._send(200 if up else 503, {})
            if self.path == "/fake/probes":
                return self._send(200, probes)
            if self.path == "/version":
                return self._send(200, {"version": VERSION})
            if self.path == "/v1/models":
                return self._send(200, {"object": "list", "data": [
                    {"id": name, "object": "model", "owned_by": "vllm", "root": repo, "max_model_len": max_len}]})
            self._send(404, {"detail": "Not Found"})

        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            if self.path != "/v1/chat/completions":
                return self._send(404, {"detail": "Not Found"})
            if body.get("model") != name:
                return self._send(404, {"object": "error", "type": "NotFoundError", "code": 404,
                                        "message": f"The model `{body.get('model')}` does not exist."})
            req = urllib.request.Request(f"http://127.0.0.1:{runner_port}/v1/chat/completions",
                                         data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=300) as resp:
                answer = json.loads(resp.read())
            answer["model"] = name
            self._send(200, answer)

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"INFO Uvicorn running on http://{host}:{port}", flush=True)
    while True:
        for c in children:
            if c.poll() is not None:
                print(f"ERROR a worker exited ({c.args[:3]}): engine dead", flush=True)
                stop()
        time.sleep(0.5)


def main() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["--version"]:
        print(VERSION)
    elif argv[:1] == ["worker"]:
        worker(int(argv[1]))
    elif argv[:1] == ["serve"] and len(argv) > 1:
        serve(argv[1:])
    else:
        sys.exit("usage: vllm serve REPO [options] | vllm --version")


if __name__ == "__main__":
    main()
