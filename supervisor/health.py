"""The supervisor's GET /health on loopback: every runtime's state as JSON, 200 when all are
ready and 503 otherwise (what systemd, Kubernetes probes and `farmhand status` read)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


class HealthServer:
    def __init__(self, host: str, port: int, report: Callable[[], dict]):
        """Bind now (OSError when the port is held); serve once start() is called."""

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                if self.path.split("?")[0] != "/health":
                    self.send_error(404)
                    return
                body = report()
                data = json.dumps(body).encode()
                self.send_response(200 if body.get("status") == "ok" else 503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.http = ThreadingHTTPServer((host, port), Handler)
        self.http.daemon_threads = True

    @property
    def address(self) -> tuple[str, int]:
        return self.http.server_address[0], self.http.server_address[1]

    def start(self) -> None:
        threading.Thread(target=self.http.serve_forever, name="health", daemon=True).start()

    def close(self) -> None:
        # Closing the socket is enough: the serving thread is a daemon and the process is
        # exiting (shutdown() would wait out serve_forever's 0.5 s poll).
        self.http.server_close()
