"""Processes: identity, spawning, and the OS-specific stop beside them.

Identity is pid + create_time + exe (+ session id and a session token): a recycled pid never
matches, so farmhand never signals a process it did not start. Each runtime is the leader of its
own session, so one killpg reaches everything it forked, but only while the leader itself is
verified: a session id outlives its leader and, once the whole session is gone, may be handed to
a stranger's new session. Members of a session whose leader is gone are farmhand's only when
they carry the session's token in their environment (FARMHAND_SESSION, inherited through fork
and exec), which a stranger's session does not. On Linux children get PR_SET_PDEATHSIG (they die
with the supervisor) and the supervisor is a child subreaper (orphaned grandchildren come back to it);
what survives a SIGKILLed supervisor anyway (a grandchild, which PDEATHSIG does not cover) is
found by its session id on the next start and reaped.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import psutil

from .identity import CREATE_TIME_SLACK, SESSION_ENV, Identity, new_session_token

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
_prctl = _libc.prctl if _libc is not None else None


def _exe(proc: psutil.Process) -> str:
    try:
        return proc.exe()
    except (psutil.Error, OSError):
        return ""


def identity_of(pid: int, token: str = "") -> Identity | None:
    try:
        proc = psutil.Process(pid)
        return Identity(pid, proc.create_time(), os.getsid(pid), _exe(proc), token)
    except (psutil.Error, OSError):
        return None


def command_line(pid: int) -> list[str]:
    """The argv of process `pid` ([] when it is gone or this user cannot read it)."""
    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error:
        return []


def listening_address(pid: int) -> tuple[str, int] | None:
    """(host, port) of the first TCP socket process `pid` listens on, if any."""
    try:
        conns = psutil.Process(pid).net_connections(kind="inet")
    except psutil.Error:
        return None
    for conn in conns:
        if conn.status == psutil.CONN_LISTEN and conn.laddr:
            return conn.laddr.ip, conn.laddr.port
    return None


def is_alive(ident: Identity) -> bool:
    """The very process we recorded is still running (not a zombie, not a recycled pid: the same
    start time and, where recorded, the same executable)."""
    try:
        proc = psutil.Process(ident.pid)
        if abs(proc.create_time() - ident.create_time) >= CREATE_TIME_SLACK or proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return not ident.exe or _exe(proc) == ident.exe
    except psutil.Error:
        return False


def signal_process(ident: Identity, sig: int) -> bool:
    """Send `sig` to the recorded process itself, only if it is still that process."""
    if not is_alive(ident):
        return False
    try:
        psutil.Process(ident.pid).send_signal(sig)  # psutil checks the start time again
        return True
    except psutil.Error:
        return False


def wait_gone(ident: Identity, timeout: float) -> bool:
    """Wait (polling, growing from 1 ms to 10 ms) until the recorded process is gone. The
    identity is checked once; then one psutil handle is polled (is_running compares the start
    time, so a reused pid reads as gone)."""
    if not is_alive(ident):
        return True
    try:
        proc = psutil.Process(ident.pid)
    except psutil.Error:
        return True
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        try:
            if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.Error:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 1.5, 0.01)


def _carries_token(proc: psutil.Process, token: str) -> bool:
    """The process inherited this session's token (an unreadable environment is a stranger's)."""
    if not token:
        return False
    try:
        return proc.environ().get(SESSION_ENV) == token
    except (psutil.Error, OSError):
        return False


def session_members(ident: Identity) -> list[psutil.Process]:
    """Live processes of the session `ident` led that are farmhand's.

    While the verified leader lives, its session id is its own pid and nobody can join a session
    from outside: every member is a descendant of ours. Once the leader is gone the session id
    may have been handed to a stranger's new session, so a member counts only if it carries the
    session's token."""
    return members_of_sessions([ident])[ident.sid]


def members_of_sessions(idents: list[Identity]) -> dict[int, list[psutil.Process]]:
    """session_members for several sessions in one scan of the process table."""
    wanted = {i.sid: i for i in idents}
    leader_verified = {i.sid: i.pid == i.sid and is_alive(i) for i in idents}
    found: dict[int, list[psutil.Process]] = {sid: [] for sid in wanted}
    me = os.getpid()
    for proc in psutil.process_iter(["pid", "create_time", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE or proc.pid == me:
                continue
            sid = os.getsid(proc.pid)
            ident = wanted.get(sid)
            if ident is None or proc.info["create_time"] < ident.create_time - CREATE_TIME_SLACK:
                continue
            if leader_verified[sid] or _carries_token(proc, ident.token):
                found[sid].append(proc)
        except (OSError, psutil.Error):
            continue
    return found


def become_subreaper() -> bool:
    if _prctl is None:
        return False
    return _prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def _child_setup() -> None:  # runs in the child between fork and exec
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def spawn(argv: list[str], env: dict[str, str], stdout) -> tuple[subprocess.Popen, Identity]:
    """Start argv as the leader of a new session, carrying a fresh session token; it dies if the
    spawning thread dies. Returns the process and its identity."""
    token = new_session_token()
    popen = subprocess.Popen(
        argv,
        env={**env, SESSION_ENV: token},
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_child_setup,  # noqa: PLW1509 - a prebound prctl call, nothing else
        close_fds=True,
    )
    # Popen returns once exec succeeded, so exe is the runtime's own, not this Python's.
    return popen, identity_of(popen.pid, token) or Identity(popen.pid, time.time(), popen.pid, "", token)


def run_lines(argv: list[str], ledger, env: dict | None, on_line, keep: int = 60) -> tuple[int, list[str]]:
    """Run a helper, handing each line of its output (stdout and stderr together) to
    `on_line(line)` as it comes; returns its exit code and its last `keep` lines."""
    tail: list[str] = []
    proc = run_helper(argv, ledger, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    with _finished(proc, ledger):
        for line in proc.stdout:
            tail = (tail + [line.rstrip()])[-keep:]
            on_line(line)
        rc = proc.wait()
    return rc, tail


def run_captured(argv: list[str], ledger=None, env: dict | None = None) -> tuple[int, str, str]:
    """Run a helper to completion: (exit code, stdout, stderr). Tracked when a ledger is given."""
    proc = run_helper(argv, ledger, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with _finished(proc, ledger):
        out, err = proc.communicate()
    return proc.returncode, out, err


@contextlib.contextmanager
def _finished(proc: subprocess.Popen, ledger):
    """A helper is waited for and forgotten however its caller leaves: killed if it raised."""
    try:
        yield proc
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        finish_helper(proc, ledger)


def run_helper(argv: list[str], ledger, *, env: dict | None = None, stdout=None, stderr=None,
               text: bool = True) -> subprocess.Popen:
    """Start a helper (pip, a build) that apply waits for, in its own session, recorded in the
    ledger first: if apply is killed, the next farmhand command on this home reaps the whole
    session (compilers included), identity-checked. PR_SET_PDEATHSIG ends the helper itself
    at once when apply dies."""
    token = new_session_token()
    proc = subprocess.Popen(argv, env={**(os.environ if env is None else env), SESSION_ENV: token},
                            stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, text=text,
                            start_new_session=True, preexec_fn=_child_setup,  # noqa: PLW1509 - prctl only
                            errors="replace" if text else None)
    if ledger is not None:
        ident = identity_of(proc.pid, token) or Identity(proc.pid, 0.0, proc.pid, "", token)
        ledger.add_helper(ident.to_json())
        proc.farmhand_ident = ident  # type: ignore[attr-defined]
    return proc


def finish_helper(proc: subprocess.Popen, ledger) -> None:
    """The helper is done: stop anything it left in its session and forget it."""
    ident = getattr(proc, "farmhand_ident", None)
    if ident is not None and ledger is not None:
        for member in session_members(ident):
            try:
                member.kill()
            except psutil.Error:
                pass
        ledger.forget_helper(ident.to_json())


def signal_session(ident: Identity, sig: int) -> int:
    """Send `sig` to every live member of the runtime's session that is farmhand's; how many
    were signalled. The group is signalled at once only while its leader is verified: a group id
    whose leader is gone may be a stranger's."""
    sent = 0
    grouped = ident.pid == ident.sid and is_alive(ident)
    if grouped:
        try:
            os.killpg(ident.sid, sig)  # the leader's group: reaches the common case in one call
            sent += 1
        except ProcessLookupError:
            grouped = False
    for proc in session_members(ident):  # members that moved to their own process group
        try:
            if grouped and os.getpgid(proc.pid) == ident.sid:
                continue  # killpg reached it: a second SIGTERM makes llama-server quit without cleanup
            proc.send_signal(sig)
            sent += 1
        except (psutil.Error, ProcessLookupError):
            continue
    return sent


@dataclass
class StopTarget:
    """A process to stop: its identity, its Popen when it is our child, the signal and grace."""

    ident: Identity
    popen: subprocess.Popen | None
    sig: int
    grace_s: float


def stop_sessions(targets: list[StopTarget], kill_wait_s: float = 5.0) -> list[dict]:
    """Stop several runtimes at once: each one's signal to its session, then each one's grace
    period (counted from the same moment), then SIGKILL for those still there. Returns timings."""
    t0 = time.monotonic()
    for t in targets:
        signal_session(t.ident, t.sig)
    deadlines = [t0 + t.grace_s for t in targets]
    killed = [False] * len(targets)
    results: list[dict | None] = [None] * len(targets)
    pending = set(range(len(targets)))
    while pending:
        members = members_of_sessions([targets[i].ident for i in pending])
        now = time.monotonic()
        for i in sorted(pending):
            t = targets[i]
            if _leader_exited(t.ident, t.popen) and not members[t.ident.sid]:
                results[i] = {"stopped_after_s": round(now - t0, 4), "killed": killed[i]}
                pending.discard(i)
            elif now >= deadlines[i]:
                if killed[i]:
                    results[i] = {"stopped_after_s": round(now - t0, 4), "killed": True, "lingering": True}
                    pending.discard(i)
                else:
                    signal_session(t.ident, signal.SIGKILL)
                    killed[i] = True
                    deadlines[i] = now + kill_wait_s
        reap_zombies()
        if pending:
            time.sleep(0.002 if time.monotonic() - t0 < 0.05 else 0.01)
    return [r or {} for r in results]


def stop_session(ident: Identity, popen: subprocess.Popen | None, sig: int, grace_s: float) -> dict:
    """Stop one runtime: `sig` to its session, `grace_s` to go, then SIGKILL; returns timings."""
    return stop_sessions([StopTarget(ident, popen, sig, grace_s)])[0]


def _leader_exited(ident: Identity, popen: subprocess.Popen | None) -> bool:
    if popen is not None:
        return popen.poll() is not None
    return not is_alive(ident)


def reap_zombies(keep: set[int] = frozenset()) -> list[int]:
    """waitpid the zombies among our children, except those a Popen object will reap."""
    reaped = []
    try:
        children = psutil.Process().children()
    except psutil.Error:
        return reaped
    for child in children:
        if child.pid in keep:
            continue
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(child.pid, os.WNOHANG)
                reaped.append(child.pid)
        except (psutil.Error, ChildProcessError, OSError):
            continue
    return reaped


def reap_leftovers(records: list[dict]) -> list[int]:
    """Kill what a dead supervisor left: every recorded session's live members (identity-checked).
    A record that is not an identity is passed over: it names nobody farmhand can vouch for."""
    idents = []
    for record in records:
        try:
            idents.append(Identity.from_json(record))
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
    members = [p for procs in members_of_sessions(idents).values() for p in procs]
    killed = []
    for proc in members:
        try:
            proc.kill()
            killed.append(proc.pid)
        except psutil.Error:
            pass
    psutil.wait_procs(members, timeout=5)
    return killed


def wait_exit(popen: subprocess.Popen, timeout: float) -> int | None:
    """popen's exit code once it ends within `timeout` seconds, else None. Sleeps in the kernel
    on a pidfd where Linux has them: Popen.wait(timeout) polls every 50 ms, which is most of an
    idle supervisor's CPU with a few runtimes."""
    if not hasattr(os, "pidfd_open"):
        try:
            return popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
    try:
        fd = os.pidfd_open(popen.pid)
    except OSError:  # already reaped: Popen knows its code, or reads it now
        return popen.wait()
    try:
        readable, _, _ = select.select([fd], [], [], timeout)
    finally:
        os.close(fd)
    return popen.wait() if readable else None
