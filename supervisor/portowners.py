"""Is the holder of a port farmhand's own? The supervisor is asked first (one loopback request:
a no-op re-run finds every port held, by its own runtimes); sockets and processes are scanned
(identity-checked, process.py) only for a port it does not account for. A port held by anyone
else is an error that names the holder; farmhand never signals it."""

from __future__ import annotations

from . import client, statefiles
from .errors import Conflict
from .paths import Paths
from .ports import holder, is_free
from .process import is_alive, session_members


def our_pids(paths: Paths) -> set[int]:
    """Pids of the supervisor and the runtime sessions farmhand started (identity-checked)."""
    pids: set[int] = set()
    found = client.locate(paths)
    idents = ([found.ident] if found else []) + list(statefiles.read_processes(paths).values())
    for ident in idents:
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
