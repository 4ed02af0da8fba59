"""A small real server standing in for backends that cannot run here (Ollama, Lemonade, vLLM)
and for fault injection. It speaks the documented health endpoints on loopback:
GET /health (llama-server, vLLM), GET /api/version and /api/tags (Ollama), GET /api/v1/health
(Lemonade). Flags make it misbehave the ways the supervisor must survive.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--ready-after", type=float, default=0.0, help="answer 503 until then")
parser.add_argument("--crash-after", type=float, default=None, help="exit 1 this long after start")
parser.add_argument("--exit-immediately", action="store_true")
parser.add_argument("--fail-unless", help="exit at once unless this file exists (a fault that gets fixed)")
parser.add_argument("--ignore-term", action="store_true", help="ignore SIGTERM (needs SIGKILL)")
parser.add_argument("--stop-delay", type=float, default=0.0, help="take this long to exit after SIGTERM")
parser.add_argument("--fork-child", action="store_true", help="leave a background child in the session")
parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
parser.add_argument("--model-file", help="a model file it claims to serve (not read)")
parser.add_argument("--log-probes", action="store_true", help="print a line per health request (to count them)")
parser.add_argument("--metrics", action="store_true", help="serve /metrics like llama-server's --metrics")
parser.add_argument("--metrics-delay", type=float, default=0.0, help="answer /metrics this late (a slow backend)")
args = parser.parse_args()

if args.child:  # the background child: lives until signalled
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    while True:
        time.sleep(3600)

print(f"fake runtime pid {os.getpid()} port {args.port}", flush=True)
if args.fail_unless and not os.path.exists(args.fail_unless):
    print(f"fatal: {args.fail_unless} is missing", flush=True)
    sys.exit(3)
if args.exit_immediately:
    print("fatal: exiting at once", flush=True)
    sys.exit(3)
if args.ignore_term:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
elif args.stop_delay:
    def _slow_exit(*_):
        time.sleep(args.stop_delay)  # a server flushing and closing, like llama-server's ~50 ms-1.2 s
        os._exit(0)

    signal.signal(signal.SIGTERM, _slow_exit)
if args.fork_child:
    subprocess.Popen([sys.executable, __file__, "--port", "0", "--child"], stdout=subprocess.DEVNULL)
started = time.monotonic()
if args.crash_after is not None:
    signal.signal(signal.SIGALRM, lambda *_: os._exit(1))
    signal.setitimer(signal.ITIMER_REAL, args.crash_after)


class Handler(BaseHTTPRequestHandler):
    scrapes = 0

    def do_GET(self):  # noqa: N802
        ready = time.monotonic() - started >= args.ready_after
        if args.log_probes:
            print(f"probe {self.path} {'ready' if ready else 'loading'}", flush=True)
        routes = {
            "/health": {"status": "ok"},
            "/api/version": {"version": "0.12.0-fake"},
            "/api/tags": {"models": []},
            "/api/v1/health": {"status": "ok"},
        }
        if self.path == "/metrics" and args.metrics:
            self.metrics()
            return
        body = routes.get(self.path)
        if body is None:
            self.send_error(404)
            return
        code = 200 if ready else 503
        if not ready:
            body = {"error": {"code": 503, "message": "Loading model"}}
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def metrics(self):
        """llama-server's families, in its names and types (counters count health probes here)."""
        time.sleep(args.metrics_delay)
        Handler.scrapes += 1
        data = ("# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.\n"
                "# TYPE llamacpp:prompt_tokens_total counter\n"
                f"llamacpp:prompt_tokens_total {Handler.scrapes * 7}\n"
                "# HELP llamacpp:requests_processing Number of requests processing.\n"
                "# TYPE llamacpp:requests_processing gauge\n"
                "llamacpp:requests_processing 0\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


# With metrics, a slow /metrics must not hold up /health (llama-server serves them on separate threads).
(ThreadingHTTPServer if args.metrics else HTTPServer)(("127.0.0.1", args.port), Handler).serve_forever()
