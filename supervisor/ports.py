"""Ports: which one each runtime gets, is one free, who holds it, and is the holder ours.

Each runtime (and the supervisor's /health) gets the port asked for (`--port`, overrides, the
profile), else the one the last apply gave it, else its backend's default, else the next free
one above that. Reserved ports are refused whichever way they were asked for. A port held by a
process farmhand did not start is an error that names the holder; farmhand never signals it.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from typing import Callable

from .errors import BadInput, Conflict
from .paths import Paths

SUPERVISOR = "supervisor"
SUPERVISOR_DEFAULT_PORT = 11545
RESERVED = {8000: "LlamaFarm's own server", 11540: "LlamaFarm's universal runtime"}
SEARCH_SPAN = 200  # how far above a default to look for a free port


def validate(port: int, what: str = "port") -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1024 <= port <= 65535:
        raise BadInput(f"{what} {port} is out of range (1024-65535)")
    if port in RESERVED:
        raise BadInput(f"{what}: port {port} is reserved for {RESERVED[port]}")
    return port


@dataclass(frozen=True)
class PortRequest:
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


def is_free(port: int, host: str = "127.0.0.1") -> bool:
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


def our_pids(paths: Paths) -> set[int]:
    """Pids of the supervisor and the runtime sessions farmhand started (identity-checked)."""
    from .process import Identity, is_alive, session_members

    pids: set[int] = set()
    for file in (paths.supervisor_address, paths.processes):
        try:
            data = json.loads(file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            continue
        records = data.get("runtimes", {}).values() if "runtimes" in data else [data]
        for record in records:
            if "pid" not in record or "create_time" not in record:
                continue
            ident = Identity.from_json(record)
            if is_alive(ident):
                pids.add(ident.pid)
            pids.update(p.pid for p in session_members(ident))
    return pids


class PortCheck:
    """"May farmhand use this port?" for one plan: free, or held by this farmhand home's own
    processes. This home's supervisor is asked first (one loopback request: a no-op re-run finds
    every port held, by its own runtimes); sockets and processes are scanned only for a port
    it does not account for."""

    def __init__(self, paths: Paths):
        self.paths = paths
        self._ours: set[int] | None = None
        self._served: set[int] | None = None

    def served_by_our_supervisor(self, port: int) -> bool:
        if self._served is None:
            from . import client

            health = client.health(self.paths) or {}
            self._served = {r["port"] for r in health.get("runtimes", []) if r.get("state") in ("starting", "ready")}
            record = client.supervisor_record(self.paths) if health else None
            if record:
                self._served.add(record["port"])
        return port in self._served

    def holder_is_ours(self, port: int) -> bool:
        if self.served_by_our_supervisor(port):
            return True
        pid, _ = holder(port)
        if pid is None:
            return False
        if self._ours is None:
            self._ours = our_pids(self.paths)
        return pid in self._ours

    def __call__(self, port: int) -> bool:
        return is_free(port) or self.holder_is_ours(port)


def ensure_free_or_ours(port: int, paths: Paths, name: str, source: str = "") -> None:
    if is_free(port):
        return
    pid, cmd = holder(port)
    if pid is not None and pid in our_pids(paths):
        return
    who = f"pid {pid} ({cmd})" if pid is not None else cmd
    asked = f" (asked for by {source})" if source else ""
    raise Conflict(
        f"port {port} for {name}{asked} is held by {who}, which farmhand did not start; farmhand will not "
        f"stop it. Free the port or choose another one."
    )
