"""Ports: which one each runtime gets, is one free, and who holds it (whether the holder is
farmhand's own: portowners.py).

Each runtime (and the supervisor's /health) gets the port asked for (`--port`, overrides, the
profile), else the one the last apply gave it, else its backend's default, else the next free
one above that. Reserved ports are refused whichever way they were asked for. A port held by a
process farmhand did not start is an error that names the holder; farmhand never signals it.
"""

from __future__ import annotations

import socket
import time
from typing import Callable, NamedTuple

from .errors import BadInput, Conflict

LOOPBACK = "127.0.0.1"  # where everything farmhand starts listens unless told otherwise
SUPERVISOR = "supervisor"
GATEWAY = "gateway"  # the runtime name a declared gateway (deployment.gateway) runs under
SUPERVISOR_DEFAULT_PORT = 11545
LLAMAFARM_PORT = 8000  # LlamaFarm's own server
RESERVED = {LLAMAFARM_PORT: "LlamaFarm's own server", 11540: "LlamaFarm's universal runtime"}
SEARCH_SPAN = 200  # how far above a default to look for a free port


def client_host(host: str) -> str:
    """Where a client on this machine reaches a server listening on `host`."""
    return LOOPBACK if host in ("0.0.0.0", "::", "") else (f"[{host}]" if ":" in host else host)


def validate(port: int, what: str = "port") -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1024 <= port <= 65535:
        raise BadInput(f"{what} {port} is out of range (1024-65535)")
    if port in RESERVED:
        raise BadInput(f"{what}: port {port} is reserved for {RESERVED[port]}")
    return port


class PortRequest(NamedTuple):
    """One port to assign: whose it is, its default, and an explicit ask with where it came from."""

    name: str  # a runtime's name, or "supervisor"
    default: int
    explicit: int | None = None  # asked for by the user or the profile: that port or an error
    source: str = ""  # where `explicit` came from, for messages


def assign(requests: list[PortRequest], recorded: dict[str, int], usable: Callable[[int], bool]) -> dict[str, int]:
    """A port for every request. `usable(port)`: free, or held by this farmhand's own process.

    Explicit ports are taken as asked (preflight later names a stranger holding one); the others
    keep their recorded port while it is usable, else take their default or the next free port.
    Port 0 (explicit) means "any free port, chosen when the process binds"."""
    taken: dict[int, str] = {}
    out: dict[str, int] = {}
    for req in requests:
        if req.explicit is None or req.explicit == 0:
            continue
        validate(req.explicit, f"{req.source or req.name} port")
        if req.explicit in taken:
            raise BadInput(f"{req.source or req.name}: port {req.explicit} is also asked for by {taken[req.explicit]}")
        taken[req.explicit] = req.name
        out[req.name] = req.explicit
    for req in requests:
        if req.name in out:
            continue
        if req.explicit == 0:
            out[req.name] = 0
            continue
        candidates = [recorded.get(req.name)] + list(range(req.default, req.default + SEARCH_SPAN))
        for port in candidates:
            if port and port not in taken and port not in RESERVED and 1024 <= port <= 65535 and usable(port):
                taken[port] = req.name
                out[req.name] = port
                break
        else:
            raise Conflict(f"{req.name}: no free port in {req.default}-{req.default + SEARCH_SPAN - 1}")
    return out


def is_free(port: int, host: str = LOOPBACK) -> bool:
    """Free when nothing is listening on `host:port` (a bind test, no connection made)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        sock.close()


def wait_free(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    delay = 0.001
    while not is_free(port):
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 1.5, 0.02)
    return True


def holder(port: int) -> tuple[int | None, str]:
    """(pid, command line) of the process listening on `port`, as far as this user can see."""
    import psutil

    try:
        conns = psutil.net_connections(kind="inet")
    except psutil.Error:
        conns = []
    for conn in conns:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            if conn.pid is None:
                return None, "a process this user cannot see"
            try:
                cmd = " ".join(psutil.Process(conn.pid).cmdline()) or psutil.Process(conn.pid).name()
            except psutil.Error:
                cmd = "?"
            return conn.pid, cmd
    return None, "an unknown process"
