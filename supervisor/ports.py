"""Ports: is one free, who holds it, and is the holder ours.

A port held by a process farmhand did not start is an error that names the holder; farmhand
never signals it.
"""

from __future__ import annotations

import json
import socket
import time

from .errors import BadInput, Conflict
from .paths import Paths


def validate(port: int, what: str = "port") -> int:
    if not isinstance(port, int) or not 1024 <= port <= 65535:
        raise BadInput(f"{what} {port} is out of range (1024-65535)")
    return port


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
    for file in (paths.supervisor_address, paths.state / "processes.json"):
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


def ensure_free_or_ours(port: int, paths: Paths, name: str) -> None:
    if is_free(port):
        return
    pid, cmd = holder(port)
    if pid is not None and pid in our_pids(paths):
        return
    who = f"pid {pid} ({cmd})" if pid is not None else cmd
    raise Conflict(
        f"port {port} for {name} is held by {who}, which farmhand did not start; farmhand will not "
        f"stop it. Free the port or choose another one (--port)."
    )
