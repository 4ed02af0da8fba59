"""Talking to the supervisor from the CLI: find it, read its health, start it, stop it.

`up` starts `farmhand run` detached (its own session, output to logs/supervisor.log) and
returns once every runtime is ready or one has failed. `down` signals the recorded supervisor
(identity-checked), waits for it and for the ports, and reaps what a killed supervisor left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import endpoint, ports, statefiles
from .errors import EXIT_CONFLICT, Conflict, FarmhandError
from .lock import holders, is_held
from .paths import Paths, private_dir
from .ports import LOOPBACK
from .statefiles import SupervisorRecord


def locate(paths: Paths) -> SupervisorRecord | None:
    """The supervisor running for this home, if one runs: by its record when that names a live
    process (identity-checked), else by the instance lock it holds, whatever the record says
    (a damaged or lost supervisor.json must never make a running supervisor look stopped)."""
    record, damaged = statefiles.read_supervisor(paths)
    held_by = holders(paths.supervisor_lock) if record is None else None
    if held_by == []:
        return None  # no record and no holder of the lock: none runs, and the process table is not read
    from . import process  # psutil: not loaded by an `up` that finds nothing running (bench/ up_fake)

    if record is not None and process.is_alive(record.ident):
        return record
    for pid in holders(paths.supervisor_lock) if held_by is None else held_by:
        ident = process.identity_of(pid)
        if ident is None or pid == os.getpid():
            continue
        cmd = process.command_line(pid)
        if not cmd or cmd[-1] != "run" or "supervisor" not in cmd:  # `-m supervisor [--system] run`
            continue
        host, port = process.listening_address(pid) or (LOOPBACK, 0)
        return SupervisorRecord(ident, host, port, "", damaged or f"{paths.supervisor_address} is missing")
    return None


def supervisor_record(paths: Paths) -> dict | None:
    """The running supervisor's address record (locate), as the JSON it writes."""
    found = locate(paths)
    return found.to_json() if found else None


def health(paths: Paths, timeout: float = 2.0) -> dict | None:
    """/health of this home's supervisor: by its record (endpoint.py), else found by its lock."""
    body = endpoint.health(paths, timeout)
    if body is not None:
        return body
    found = locate(paths)
    return endpoint.ask(found, timeout) if found is not None else None


def up(paths: Paths, report, timeout: float | None = None) -> dict:
    """Start the supervisor unless it runs; wait until every runtime is ready or one failed."""
    specs = statefiles.read_specs(paths)
    if specs is None:
        raise FarmhandError(f"nothing to run: no runtime specs at {paths.runtimes}; run `farmhand apply` first")
    if not specs.runtimes:  # every runtime is a server farmhand uses but does not start
        return {"status": "ok", "supervisor": None, "runtimes": [],
                "note": "nothing for farmhand to start: every runtime is a server it uses but does not run"}
    if timeout is None:
        timeout = max(r.start_timeout_s for r in specs.runtimes) + 10
    child = None
    record = supervisor_record(paths)
    epoch = None  # after a retry, wait for the supervisor's answer to it, not its old state
    if record is not None:
        body = health(paths, timeout=2.0)
        if body is None:

            raise Conflict(f"the supervisor (pid {record['pid']}) is not responding (stopped or hung); farmhand will "
                           "not start a second one beside it. `farmhand down` stops it (SIGKILL after 60 s)")
        failed = [r["name"] for r in body["runtimes"] if r["state"] == "failed"]
        if failed:
            report.line(f"restarting {', '.join(failed)} (failed) with a fresh failure budget")
            epoch = body.get("epoch", 0) + 1
            os.kill(record["pid"], signal.SIGUSR1)
    else:
        private_dir(paths.logs)
        log_fd = os.open(paths.supervisor_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        os.fchmod(log_fd, 0o600)  # a log made by an older farmhand with the umask's mode
        log = os.fdopen(log_fd, "ab")
        child = subprocess.Popen(
            [sys.executable, "-m", "supervisor", "run"], stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
            env=os.environ | {"FARMHAND_DETACHED": "1", **({"FARMHAND_SYSTEM": "1"} if paths.mode == "system" else {})},
        )
        log.close()
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        # A supervisor this call started writes its record before it serves; finding it by its
        # lock (a process-table scan) is for a record lost beside a running one, not for this wait.
        body = endpoint.health(paths, timeout=1.0) if child is not None else health(paths, timeout=1.0)
        if body is not None and body["status"] in ("ok", "failed") and body.get("epoch", 0) >= (epoch or 0):
            break
        if child is not None and child.poll() is not None and supervisor_record(paths) is None:
            tail = _tail(paths.supervisor_log, 10)
            err = Conflict if child.returncode == EXIT_CONFLICT else FarmhandError  # its port held by a stranger
            raise err(f"the supervisor exited (code {child.returncode}) before its runtimes were ready:\n{tail}")
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

        err = Conflict if any("held by" in (r["last_error"] or "") for r in failed) else FarmhandError
        raise err("runtime failed: " + "\n".join(lines))
    return body


def _reap_later(child: subprocess.Popen) -> None:
    # The supervisor outlives this process; Popen's destructor must not warn about it.
    child.returncode = 0


def down(paths: Paths, report=None, timeout: float = 60.0) -> dict:
    """Stop the supervisor and its runtimes. Idempotent: nothing running is success. The
    supervisor is found by its record or by the lock it holds, and "stopped" is said only once it
    is seen gone."""
    from . import process  # psutil (see locate)

    t0 = time.monotonic()
    found = locate(paths)
    runtime_ports = statefiles.runtime_ports(paths)
    result = {"stopped": False, "reaped": [], "seconds": 0.0}
    if found is not None:
        ident = found.ident
        process.signal_process(ident, signal.SIGTERM)
        process.signal_process(ident, signal.SIGCONT)  # a stopped (SIGSTOP) supervisor must run to act on it
        if not process.wait_gone(ident, timeout):
            process.signal_process(ident, signal.SIGKILL)
            if not process.wait_gone(ident, 5.0):
                raise FarmhandError(f"the supervisor (pid {ident.pid}) is still running after SIGKILL; "
                                    "nothing else was stopped")
        result["stopped"] = True
        if found.damaged:
            result["note"] = f"found the supervisor by its lock: {found.damaged}"
    # Whatever a killed supervisor left behind (identity-checked, never a stranger).
    leftovers = statefiles.read_processes(paths)
    if leftovers:
        result["reaped"] = process.reap_leftovers([i.to_json() for i in leftovers.values()])
    paths.processes.unlink(missing_ok=True)
    if locate(paths) is None:
        paths.supervisor_address.unlink(missing_ok=True)
        if paths.supervisor_lock.exists() and not is_held(paths.supervisor_lock):
            paths.supervisor_lock.unlink(missing_ok=True)
    for port in runtime_ports.values():
        ports.wait_free(port, 5.0)
    result["seconds"] = round(time.monotonic() - t0, 4)
    return result


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"
