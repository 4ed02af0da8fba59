"""The supervisor's GET /health on loopback: every runtime's state as JSON, 200 when all are
ready and 503 otherwise (what systemd, Kubernetes probes and `farmhand status` read); and GET
/metrics, Prometheus's text format (metrics.py), on the same port.

Probes arrive in bursts (a kubelet, a load balancer, a user's watch loop), so the server is
threaded with a real listen backlog, and bounded: at most MAX_HANDLERS requests are handled at
once, the rest wait in the kernel's queue instead of being refused, and a client that sends
nothing is dropped after HANDLER_TIMEOUT_S. A request whose Host header names another site is
refused (DNS rebinding: a page in the host's browser must not read the supervisor)."""

from __future__ import annotations

import ipaddress
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

BACKLOG = 1024  # the kernel caps it at net.core.somaxconn
MAX_HANDLERS = 64
HANDLER_TIMEOUT_S = 5.0
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus's text format


def host_allowed(header: str | None) -> bool:
    """A Host header a rebinding attack cannot produce: an IP address (a probe of the pod's IP
    included) or `localhost`. A DNS name is how a foreign page reaches a loopback server, so any
    other name is refused. HTTP/1.0 clients send none."""
    if not header:
        return True
    name = header.strip().lower()
    if name.startswith("["):
        name = name[1:].split("]", 1)[0]
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    if name == "localhost":
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class _BoundedServer(ThreadingHTTPServer):
    request_queue_size = BACKLOG
    daemon_threads = True

    def __init__(self, *args, **kwargs):
        self._slots = threading.BoundedSemaphore(MAX_HANDLERS)
        super().__init__(*args, **kwargs)

    def process_request(self, request, client_address):
        self._slots.acquire()  # blocks accepting, never refuses: the backlog holds the rest
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class HealthServer:
    def __init__(self, host: str, port: int, report: Callable[[], dict], metrics: Callable[[], bytes] | None = None):
        """Bind now (OSError when the port is held); serve once start() is called. `metrics`
        gives the body of GET /metrics (Prometheus text)."""

        class Handler(BaseHTTPRequestHandler):
            timeout = HANDLER_TIMEOUT_S

            def do_GET(self):  # noqa: N802 - http.server's naming
                if not host_allowed(self.headers.get("Host")):
                    self.send_error(403, "unexpected Host header")
                    return
                path = self.path.split("?")[0]
                if path == "/metrics" and metrics is not None:
                    self._send(200, METRICS_TYPE, metrics())
                    return
                if path != "/health":
                    self.send_error(404)
                    return
                body = report()
                self._send(200 if body.get("status") == "ok" else 503, "application/json", json.dumps(body).encode())

            def _send(self, code: int, content_type: str, data: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.http = _BoundedServer((host, port), Handler)

    @property
    def address(self) -> tuple[str, int]:
        return self.http.server_address[0], self.http.server_address[1]

    def start(self) -> None:
        threading.Thread(target=self.http.serve_forever, name="health", daemon=True).start()

    def close(self) -> None:
        # Closing the socket is enough: the serving thread is a daemon and the process is
        # exiting (shutdown() would wait out serve_forever's 0.5 s poll).
        self.http.server_close()
