"""The supervisor's parts, each alone: the state table, the restart policy, the one-per-home
lock, the /health server, log rotation, and ${env:VAR} resolution."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap

import pytest
import requests

from supervisor.daemon import MissingSecret, expand_env
from supervisor.health import HealthServer
from supervisor.lock import InstanceLock, is_held
from supervisor.policy import RestartPolicy
from supervisor.runlog import RotatingLog
from supervisor.specs import RuntimeSpec, SupervisorSpec
from supervisor.states import TRANSITIONS, IllegalTransition, State, next_state

S = State
# Every (state, event) pair: the state it leads to, or None where it is illegal.
TABLE = {
    "start": {S.STOPPED: S.STARTING, S.BACKOFF: S.STARTING},
    "probe_ok": {S.STARTING: S.READY, S.UNHEALTHY: S.READY},
    "probe_miss": {S.READY: S.UNHEALTHY},
    "hung": {S.UNHEALTHY: S.BACKOFF},
    "exited": {S.STARTING: S.BACKOFF, S.READY: S.BACKOFF, S.UNHEALTHY: S.BACKOFF},
    "start_timeout": {S.STARTING: S.BACKOFF},
    "give_up": {S.STARTING: S.FAILED, S.READY: S.FAILED, S.UNHEALTHY: S.FAILED, S.BACKOFF: S.FAILED},
    "reset": {S.FAILED: S.STOPPED},
    "stop": {S.STARTING: S.STOPPING, S.READY: S.STOPPING, S.UNHEALTHY: S.STOPPING, S.BACKOFF: S.STOPPING,
             S.FAILED: S.STOPPING, S.STOPPED: S.STOPPING},
    "stopped": {S.STOPPING: S.STOPPED},
}


@pytest.mark.parametrize("event", TABLE)
@pytest.mark.parametrize("state", list(State))
def test_state_table(state, event):
    want = TABLE[event].get(state)
    if want is None:
        with pytest.raises(IllegalTransition, match=f"'{event}' is not allowed from {state.value}"):
            next_state(state, event)
    else:
        assert next_state(state, event) == want
    assert set(TRANSITIONS) == set(TABLE)


@pytest.mark.parametrize("failures, now, rand, want_delay, want_recent", [
    ([], 100.0, 0.0, 0.5, 1),  # first failure: the initial backoff
    ([99.0], 100.0, 0.0, 1.0, 2),  # then doubling
    ([97.0, 98.0, 99.0], 100.0, 0.0, 4.0, 4),
    ([10.0, 20.0, 99.0], 100.0, 0.0, 1.0, 2),  # failures outside the window are forgotten
    ([96.0, 97.0, 98.0, 99.0], 100.0, 0.0, None, 5),  # the fifth in the window: give up
    ([99.0], 100.0, 1.0, 1.2, 2),  # jitter: +20% at most
    ([99.0], 100.0, -1.0, 0.8, 2),
])
def test_restart_policy(failures, now, rand, want_delay, want_recent):
    recent, delay = RestartPolicy().after_failure(failures, now, rand)
    assert len(recent) == want_recent
    assert delay == pytest.approx(want_delay) if want_delay is not None else delay is None


def test_backoff_is_capped():
    policy = RestartPolicy(max_failures=100, backoff_initial_s=1, backoff_max_s=8)
    _, delay = policy.after_failure([float(i) for i in range(20)], 20.0, 0.0)
    assert delay == 8


def held_elsewhere(path) -> bool:
    """Whether another process fails to take the lock (flock is per open file, so a process)."""
    code = textwrap.dedent(f"""
        import sys
        from supervisor.lock import InstanceLock, LockHeld
        try:
            InstanceLock({str(path)!r}).acquire()
        except LockHeld:
            sys.exit(3)
    """)
    return subprocess.run([sys.executable, "-c", code]).returncode == 3


def test_one_supervisor_per_home(tmp_path):
    lock_file = tmp_path / "supervisor.lock"
    first = InstanceLock(lock_file)
    first.acquire()
    assert is_held(lock_file) and held_elsewhere(lock_file)
    assert stat.S_IMODE(lock_file.stat().st_mode) == 0o600
    first.release()
    assert not lock_file.exists() and not is_held(lock_file)
    second = InstanceLock(lock_file)
    second.acquire()
    assert held_elsewhere(lock_file)
    second.release()
    assert not held_elsewhere(lock_file)


def test_a_stale_lock_file_left_by_a_killed_supervisor_is_not_held(tmp_path):
    lock_file = tmp_path / "supervisor.lock"
    lock_file.write_text("")
    assert not is_held(lock_file)
    lock = InstanceLock(lock_file)
    lock.acquire()
    lock.release()


def test_health_server_reports_and_answers_only_health():
    report = {"status": "starting", "runtimes": []}
    server = HealthServer("127.0.0.1", 0, lambda: report)
    server.start()
    host, port = server.address
    try:
        assert host == "127.0.0.1"
        resp = requests.get(f"http://127.0.0.1:{port}/health", timeout=5)
        assert resp.status_code == 503 and resp.json() == report
        report["status"] = "ok"
        assert requests.get(f"http://127.0.0.1:{port}/health?x=1", timeout=5).status_code == 200
        assert requests.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 404
    finally:
        server.close()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/health", timeout=2)


def test_health_server_on_a_taken_port_raises_at_once():
    first = HealthServer("127.0.0.1", 0, dict)
    try:
        with pytest.raises(OSError):
            HealthServer("127.0.0.1", first.address[1], dict)
    finally:
        first.close()


def test_log_rotation_keeps_n_files_owner_only(tmp_path):
    log = RotatingLog(tmp_path / "logs" / "svc.log", max_bytes=100, backups=2)
    for i in range(40):
        log.write(f"line {i:02d} ........\n".encode())
    log.close()
    files = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert files == ["svc.log", "svc.log.1", "svc.log.2"]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in (tmp_path / "logs").iterdir())
    assert stat.S_IMODE((tmp_path / "logs").stat().st_mode) == 0o700
    assert (tmp_path / "logs" / "svc.log").read_text().splitlines()[-1] == "line 39 ........"
    assert list(log.tail)[-1] == "line 39 ........"


def test_env_references_resolve_at_spawn_and_a_missing_one_fails_closed():
    assert expand_env("--x ${env:A}/${env:B}", {"A": "1", "B": "2"}) == "--x 1/2"
    with pytest.raises(MissingSecret) as missing:
        expand_env("${env:API_KEY}", {})
    assert missing.value.var == "API_KEY"
    with pytest.raises(MissingSecret):
        expand_env("${env:API_KEY}", {"API_KEY": ""})


def test_specs_round_trip_and_digest_changes_with_content():
    rt = RuntimeSpec(name="a", backend="llama-server", argv=("x", "--port", "1"), port=1,
                     readiness_url="http://127.0.0.1:1/health", env=(("K", "${env:V}"),), models=("m",))
    spec = SupervisorSpec((rt,), port=11545)
    again = SupervisorSpec.from_json(json.loads(spec.text()))
    assert again == spec and again.digest == spec.digest
    assert SupervisorSpec((rt,), port=11546).digest != spec.digest


def test_stop_signal_reaches_each_session_member_once(tmp_path):
    """killpg reaches the leader's group; the sweep for members in other groups must skip those,
    or llama-server sees a second SIGTERM ("terminating immediately") and skips its cleanup."""
    import signal

    from conftest import wait_for

    from supervisor.process import identity_of, signal_session

    log = tmp_path / "signals"
    child = textwrap.dedent(f"""
        import os, signal, subprocess, sys, time
        def on_term(sig, frame):
            with open({str(log)!r}, "a") as fh:
                fh.write(f"{{os.getpid()}}\\n")
        signal.signal(signal.SIGTERM, on_term)
        if sys.argv[1:] == ["leader"]:
            # one member in the leader's group, one in a group of its own
            subprocess.Popen([sys.executable, __file__, "member"])
            subprocess.Popen([sys.executable, __file__, "member"], preexec_fn=os.setpgrp)
        with open({str(tmp_path / "ready")!r}, "a") as fh:
            fh.write(f"{{os.getpid()}}\\n")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            time.sleep(0.05)
    """)
    script = tmp_path / "child.py"
    script.write_text(child)
    proc = subprocess.Popen([sys.executable, str(script), "leader"], start_new_session=True, stdout=subprocess.PIPE)
    try:
        import psutil

        ready = tmp_path / "ready"
        wait_for(lambda: ready.exists() and len(ready.read_text().split()) == 3, what="three handlers installed")
        ident = identity_of(proc.pid)
        assert ident is not None and ident.sid == proc.pid
        signal_session(ident, signal.SIGTERM)
        wait_for(lambda: log.exists() and len(log.read_text().split()) >= 3, what="three SIGTERMs")
        pids = log.read_text().split()
        assert sorted(pids) == sorted(set(pids)), f"a process got SIGTERM twice: {pids}"
    finally:
        for p in psutil.Process(proc.pid).children() if proc.poll() is None else []:
            p.kill()
        proc.kill()
        proc.wait()


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm")
def test_shared_memory_a_runtime_left_is_removed_only_when_nothing_uses_it(tmp_path):
    """shm.release: a segment the runtime was seen using and nobody maps any more goes; one a
    live process still holds stays, and so does one the runtime was never seen using."""
    import uuid

    from supervisor import shm

    tag = uuid.uuid4().hex[:8]
    left, held, foreign = (f"farmhand-test-{tag}-{n}" for n in ("left", "held", "foreign"))
    for name in (left, held, foreign):
        (shm.SHM / name).write_bytes(b"x" * 64)
    holder = subprocess.Popen([sys.executable, "-c", f"import mmap,sys,time; f=open('/dev/shm/{held}','r+b'); "
                               "m=mmap.mmap(f.fileno(), 0); print('ok', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ok"
        assert held in shm.used_by([holder.pid]), "a mapped segment is seen"
        removed = shm.release({left, held})
        assert removed == [left], removed
        assert not (shm.SHM / left).exists() and (shm.SHM / held).exists() and (shm.SHM / foreign).exists()
    finally:
        holder.kill()
        holder.wait()
        for name in (left, held, foreign):
            (shm.SHM / name).unlink(missing_ok=True)


@pytest.mark.parametrize("text, expected", [
    ('{"runtimes": [{"name": "a", "port": 11434}, {"name": "b", "port": "8081"}]}', {"a": 11434, "b": 8081}),
    ('{"runtimes": [{"name": "a"}, {"port": 1}, "junk", {"name": "c", "port": 9000}]}', {"c": 9000}),
    ('{"runtimes": {"a": {"port": 1}}}', {}),
    ('{"runtimes": "x"}', {}),
    ("[1, 2]", {}),
    ("not json", {}),
    (None, {}),
])
def test_down_reads_the_runtime_ports_from_any_runtimes_json_without_failing(tmp_path, text, expected):
    """`down` waits on each runtime's port to be free; a damaged runtimes.json gives the ports it
    still names, never an error (down must work whatever state it finds)."""
    from supervisor.paths import Paths
    from supervisor.statefiles import runtime_ports

    paths = Paths(tmp_path / "data", tmp_path / "state", tmp_path / "config", tmp_path / "cache", "home")
    if text is not None:
        paths.runtimes.parent.mkdir(parents=True, exist_ok=True)
        paths.runtimes.write_text(text)
    assert runtime_ports(paths) == expected, f"runtimes.json {text!r}"
