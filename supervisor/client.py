"""Talking to the supervisor from the CLI: find it, read its health, start it, stop it.

`up` starts `farmhand run` detached (its own session, output to logs/supervisor.log) and
returns once every runtime is ready or one has failed. `down` signals the recorded supervisor
(identity-checked), waits for it and for the ports, and reaps what a killed supervisor left.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .errors import FarmhandError
from .lock import is_held
from .paths import Paths, private_dir


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def supervisor_record(paths: Paths) -> dict | None:
    """The running supervisor's address record, if that very process still runs."""
    record = _read_json(paths.supervisor_address)
    if not record:
        return None
    from .process import Identity, is_alive

    return record if is_alive(Identity.from_json(record)) else None


def health(paths: Paths, timeout: float = 2.0) -> dict | None:
    record = _read_json(paths.supervisor_address)
    if not record:
        return None
    conn = http.client.HTTPConnection(record["host"], record["port"], timeout=timeout)
    try:
        conn.request("GET", "/health")
        body = json.loads(conn.getresponse().read())
        return body if body.get("supervisor", {}).get("pid") == record["pid"] else None
    except (OSError, http.client.HTTPException, ValueError):
        return None
    finally:
        conn.close()


def up(paths: Paths, report, timeout: float | None = None) -> dict:
    """Start the supervisor unless it runs; wait until every runtime is ready or one failed."""
    specs = _read_json(paths.runtimes)
    if not specs:
        raise FarmhandError(f"nothing to run: no runtime specs at {paths.runtimes}; run `farmhand apply` first")
    if not specs["runtimes"]:  # every runtime is a server farmhand uses but does not start
        return {"status": "ok", "supervisor": None, "runtimes": [],
                "note": "nothing for farmhand to start: every runtime is a server it uses but does not run"}
    if timeout is None:
        timeout = max(r["start_timeout_s"] for r in specs["runtimes"]) + 10
    child = None
    record = supervisor_record(paths)
    epoch = None  # after a retry, wait for the supervisor's answer to it, not its old state
    if record is not None:
        body = health(paths, timeout=2.0)
        if body is None:
            from .errors import Conflict

            raise Conflict(f"the supervisor (pid {record['pid']}) is not responding (stopped or hung); farmhand will "
                           "not start a second one beside it. `farmhand down` stops it (SIGKILL after 60 s)")
        failed = [r["name"] for r in body["runtimes"] if r["state"] == "failed"]
        if failed:
            report.line(f"restarting {', '.join(failed)} (failed) with a fresh failure budget")
            epoch = body.get("epoch", 0) + 1
            os.kill(record["pid"], signal.SIGUSR1)
    else:
        private_dir(paths.logs)
        log = open(paths.logs / "supervisor.log", "ab")  # noqa: SIM115 - handed to the child
        child = subprocess.Popen(
            [sys.executable, "-m", "supervisor", "run"], stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
            env=os.environ | {"FARMHAND_DETACHED": "1", **({"FARMHAND_SYSTEM": "1"} if paths.mode == "system" else {})},
        )
        log.close()
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        body = health(paths, timeout=1.0)
        if body is not None and body["status"] in ("ok", "failed") and body.get("epoch", 0) >= (epoch or 0):
            break
        if child is not None and child.poll() is not None and supervisor_record(paths) is None:
            tail = _tail(paths.logs / "supervisor.log", 10)
            raise FarmhandError(f"the supervisor exited (code {child.returncode}) before its runtimes were ready:\n{tail}")
        if time.monotonic() > deadline:
            raise FarmhandError(f"runtimes not ready after {timeout:.0f}s; see `farmhand status` and `farmhand logs`")
        time.sleep(delay)
        delay = min(delay * 1.3, 0.02)
    if child is not None:
        _reap_later(child)
    if body["status"] == "failed":
        failed = [r for r in body["runtimes"] if r["state"] == "failed"]
        lines = []
        for r in failed:
            lines.append(f"{r['name']}: {r['last_error']}")
            lines += [f"  | {line}" for line in r.get("log_tail", [])[-5:]]
        from .errors import Conflict

        err = Conflict if any("held by" in (r["last_error"] or "") for r in failed) else FarmhandError
        raise err("runtime failed: " + "\n".join(lines))
    return body


def _reap_later(child: subprocess.Popen) -> None:
    # The supervisor outlives this process; Popen's destructor must not warn about it.
    child.returncode = 0


def down(paths: Paths, report=None, timeout: float = 60.0) -> dict:
    """Stop the supervisor and its runtimes. Idempotent: nothing running is success."""
    from . import ports, process

    t0 = time.monotonic()
    record = supervisor_record(paths)
    specs = _read_json(paths.runtimes) or {"runtimes": []}
    result = {"stopped": False, "reaped": [], "seconds": 0.0}
    if record is not None:
        ident = process.Identity.from_json(record)
        os.kill(ident.pid, signal.SIGTERM)
        os.kill(ident.pid, signal.SIGCONT)  # a stopped (SIGSTOP) supervisor must run to act on it
        deadline = time.monotonic() + timeout
        delay = 0.001
        while process.is_alive(ident) and time.monotonic() < deadline:
            time.sleep(delay)
            delay = min(delay * 1.5, 0.01)
        if process.is_alive(ident):
            os.kill(ident.pid, signal.SIGKILL)
        result["stopped"] = True
    # Whatever a killed supervisor left behind (identity-checked, never a stranger).
    leftovers = (_read_json(paths.processes) or {}).get("runtimes", {})
    if leftovers:
        result["reaped"] = process.reap_leftovers(list(leftovers.values()))
        paths.processes.unlink(missing_ok=True)
    if record is None or not process.is_alive(process.Identity.from_json(record)):
        paths.supervisor_address.unlink(missing_ok=True)
        if paths.supervisor_lock.exists() and not is_held(paths.supervisor_lock):
            paths.supervisor_lock.unlink(missing_ok=True)
    for runtime in specs["runtimes"]:
        ports.wait_free(runtime["port"], 5.0)
    result["seconds"] = round(time.monotonic() - t0, 4)
    return result


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"
