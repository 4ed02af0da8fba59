"""A loopback stand-in for a cloud provider's OpenAI-compatible API (the internet is out of reach
here): POST /v1/chat/completions answers only a request carrying `Authorization: Bearer KEY`
(KEY from the env var named by --key-env; 401 otherwise), with the OpenAI response shape and an
answer that names where it came from. GET /v1/models lists its one model.

Test controls (loopback only, like the fake): GET /_fake/stats -> {requests, authorized,
unauthorized, bearer_seen: [...]} (the keys it was sent, for the test to assert on), POST
/_fake/fail {"status": 503} makes every completion fail with that status until POST
/_fake/fail {"status": 0}.
"""

import argparse
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--key-env", required=True, help="the env var holding the only key it accepts")
parser.add_argument("--model", default="cloud-large")
args = parser.parse_args()
KEY = os.environ[args.key_env]
lock = threading.Lock()
stats = {"requests": 0, "authorized": 0, "unauthorized": 0, "bearer_seen": []}
failing = {"status": 0}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):  # quiet: the test reads the stats route
        pass

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}")

    def do_GET(self):
        if self.path == "/_fake/stats":
            with lock:
                return self._send(200, stats)
        if self.path == "/v1/models":
            return self._send(200, {"object": "list", "data": [{"id": args.model, "object": "model"}]})
        self._send(404, {"error": {"message": "not found"}})

    def do_POST(self):
        body = self._body()
        if self.path == "/_fake/fail":
            failing["status"] = int(body.get("status") or 0)
            return self._send(200, failing)
        if self.path != "/v1/chat/completions":
            return self._send(404, {"error": {"message": "not found"}})
        auth = self.headers.get("Authorization", "")
        with lock:
            stats["requests"] += 1
            stats["bearer_seen"].append(auth.removeprefix("Bearer "))
            ok = auth == f"Bearer {KEY}"
            stats["authorized" if ok else "unauthorized"] += 1
        if not ok:
            return self._send(401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
                                              "code": "invalid_api_key"}})
        if failing["status"]:
            return self._send(failing["status"], {"error": {"message": "the cloud is down (told to fail)"}})
        question = (body.get("messages") or [{}])[-1].get("content", "")
        answer = f"The cloud model {args.model} answers: {question[:60]}"
        self._send(200, {
            "id": f"chatcmpl-{time.time_ns()}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model") or args.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": len(question.split()), "completion_tokens": len(answer.split()),
                      "total_tokens": len(question.split()) + len(answer.split())}})


server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
print(f"fake cloud pid {os.getpid()} port {args.port} model {args.model}", flush=True)
server.serve_forever()
