"""The supervisor's fault suite. Each fault is repeated FARMHAND_FAULT_REPEAT times (20 in
`make test`, 200 in `make bench-faults`) and the clean count is printed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from checks import Trials
from conftest import FAKE, fake_spec, free_port, home_processes, pid_gone, wait_for

REPEAT = int(os.environ.get("FARMHAND_FAULT_REPEAT", "20"))
pytestmark = pytest.mark.faults


def leaders(farmhand, port: int) -> list[psutil.Process]:
    return [p for p in home_processes(farmhand.home)
            if str(FAKE) in " ".join(p.cmdline()) and f"--port {port}" in " ".join(p.cmdline())]


def children(farmhand) -> list[psutil.Process]:
    return [p for p in home_processes(farmhand.home) if "--child" in p.cmdline()]


def supervisors(farmhand) -> list[psutil.Process]:
    return [p for p in home_processes(farmhand.home) if p.cmdline()[-2:] == ["supervisor", "run"]]


def supervisor_pid(farmhand) -> int:
    return json.loads((farmhand.home / "state" / "supervisor.json").read_text())["pid"]


def kill_and_wait(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: pid_gone(pid),
             what=f"pid {pid} to die")


def test_sigkill_supervisor_mid_run_then_up(farmhand, capsys):
    port = free_port()
    farmhand.write_specs([fake_spec("svc", port, "--fork-child")])
    trials = Trials(capsys, "SIGKILL supervisor mid-run, then up", REPEAT)
    for _ in range(REPEAT):
        farmhand.run("up", check=True)
        kill_and_wait(supervisor_pid(farmhand))
        farmhand.run("up", check=True)
        (leader,) = leaders(farmhand, port)
        kids = children(farmhand)
        trials.record(one_child=len(kids) == 1, child_in_the_new_leaders_session=bool(kids) and os.getsid(
            kids[0].pid) == leader.pid, one_supervisor=len(supervisors(farmhand)) == 1)
    farmhand.run("down", check=True)
    assert not home_processes(farmhand.home)
    trials.report()


def test_sigkill_supervisor_during_startup(farmhand, capsys):
    port = free_port()
    farmhand.write_specs([fake_spec("svc", port, "--ready-after", "0.5", "--fork-child")])
    processes = farmhand.home / "state" / "processes.json"
    trials = Trials(capsys, "SIGKILL supervisor during start-up", REPEAT)
    for _ in range(REPEAT):
        starting = subprocess.Popen([sys.executable, "-m", "supervisor", "up"], env=farmhand.env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: processes.exists() and json.loads(processes.read_text() or "{}").get("runtimes"),
                 what="the runtime to be spawned")
        kill_and_wait(supervisor_pid(farmhand))
        assert starting.wait(30) != 0  # `up` reports the supervisor died; it does not hang
        farmhand.run("up", check=True)
        one_leader, one_child = len(leaders(farmhand, port)) == 1, len(children(farmhand)) == 1
        farmhand.run("down", check=True)
        trials.record(one_leader=one_leader, one_child=one_child, nothing_left_after_down=not home_processes(
            farmhand.home))
    trials.report()


def test_crash_loop_backs_off_then_fails(farmhand, capsys):
    port = free_port()
    farmhand.write_specs([fake_spec("svc", port, "--exit-immediately", max_failures=3, backoff=0.02)])
    trials = Trials(capsys, "crash loop -> backoff -> failed", REPEAT)
    for _ in range(REPEAT):
        proc = farmhand.run("up")
        body = json.loads(farmhand.run("status", "--json").stdout)
        (rt,) = body["runtimes"]
        trials.record(up_exits_1=proc.returncode == 1, up_says_runtime_failed="runtime failed" in proc.stderr,
                      up_shows_the_log="fatal: exiting at once" in proc.stderr, state_failed=rt["state"] == "failed",
                      two_restarts=rt["restarts"] == 2,
                      gave_up_after_3="gave up after 3 failures" in (rt["last_error"] or ""),
                      log_tail_kept=bool(rt["log_tail"]))
        farmhand.run("down", check=True)
    trials.report()


def test_crash_after_ready_is_restarted(farmhand):
    port = free_port()
    farmhand.write_specs([fake_spec("svc", port, "--crash-after", "0.3", max_failures=3, backoff=0.02)])
    farmhand.run("up", check=True)
    body = wait_for(lambda: (b := json.loads(farmhand.run("status", "--json").stdout))["runtimes"][0]["state"]
                    == "failed" and b, timeout=30, what="the runtime to be given up")
    rt = body["runtimes"][0]
    assert rt["restarts"] == 2 and "exited with code 1" in rt["last_error"]
    farmhand.run("down", check=True)


def test_runtime_ignoring_sigterm_is_killed_after_grace(farmhand, capsys):
    port = free_port()
    grace = 0.3
    farmhand.write_specs([fake_spec("svc", port, "--ignore-term", grace_s=grace)])
    trials = Trials(capsys, "runtime ignores SIGTERM -> SIGKILL after grace", REPEAT)
    for _ in range(REPEAT):
        farmhand.run("up", check=True)
        (leader,) = leaders(farmhand, port)
        result = farmhand.json("down")
        gone = pid_gone(leader.pid)
        trials.record(leader_gone=gone, waited_the_grace=grace <= result["seconds"],
                      killed_soon_after=result["seconds"] < grace + 3)
    trials.report()


def test_background_child_is_stopped_too(farmhand, capsys):
    port = free_port()
    farmhand.write_specs([fake_spec("svc", port, "--fork-child")])
    trials = Trials(capsys, "runtime forks a background child -> stopped too", REPEAT)
    for _ in range(REPEAT):
        farmhand.run("up", check=True)
        (kid,) = children(farmhand)
        farmhand.run("down", check=True)
        trials.record(child_gone=pid_gone(kid.pid),
                      nothing_left=not home_processes(farmhand.home))
    trials.report()


def test_two_ups_at_once_make_one_supervisor(farmhand, capsys):
    port = free_port()
    farmhand.write_specs([fake_spec("svc", port)])
    trials = Trials(capsys, "two up at once -> one supervisor", REPEAT)
    for _ in range(REPEAT):
        ups = [subprocess.Popen([sys.executable, "-m", "supervisor", "up"], env=farmhand.env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        codes = [p.wait(60) for p in ups]
        for p in ups:
            p.stderr.close()
        trials.record(both_up_exit_0=codes == [0, 0], one_supervisor=len(supervisors(farmhand)) == 1,
                      one_runtime=len(leaders(farmhand, port)) == 1)
        farmhand.run("down", check=True)
    trials.report()


def test_up_reports_a_port_held_by_a_stranger(farmhand, stranger):
    port, holder = stranger
    farmhand.write_specs([fake_spec("svc", port)])
    proc = farmhand.run("up")
    assert proc.returncode == 3
    assert f"pid {holder.pid}" in proc.stderr and "not stopping it" in proc.stderr
    assert holder.poll() is None


def test_readiness_is_reported_promptly_and_status_has_details(farmhand):
    port = free_port()
    farmhand.write_specs([fake_spec("svc", port, "--ready-after", "0.3")])
    t0 = time.monotonic()
    body = farmhand.json("up")
    assert time.monotonic() - t0 >= 0.3
    (rt,) = body["runtimes"]
    assert rt["state"] == "ready" and rt["pid"] and rt["port"] == port and rt["models"] == ["fake"]
    assert rt["ready_after_s"] >= 0.3 and rt["last_probe_ms"] is not None
    table = farmhand.run("status", check=True).stdout
    assert "svc" in table and "ready" in table and str(port) in table
    assert "fake runtime pid" in farmhand.run("logs", "svc", check=True).stdout


def test_a_stopped_supervisor_is_not_responding_and_never_doubled(farmhand):
    port = free_port()
    farmhand.write_specs([fake_spec("svc", port)])
    farmhand.run("up", check=True)
    sup = supervisor_pid(farmhand)
    os.kill(sup, signal.SIGSTOP)
    try:
        status = farmhand.run("status", "--json")
        body = json.loads(status.stdout)
        assert status.returncode == 3 and body["status"] == "not responding" and body["supervisor"]["pid"] == sup
        assert f"supervisor: not responding (pid {sup})" in farmhand.run("status").stdout
        up = farmhand.run("up")
        assert up.returncode == 3 and f"the supervisor (pid {sup}) is not responding" in up.stderr
        assert len(supervisors(farmhand)) == 1 and len(leaders(farmhand, port)) == 1
    finally:
        down = farmhand.run("down")  # SIGTERM, and SIGCONT so a stopped supervisor can act on it
    assert down.returncode == 0
    assert not home_processes(farmhand.home)


def test_up_restarts_runtimes_that_gave_up_with_a_fresh_budget(farmhand, tmp_path):
    marker = tmp_path / "fixed"
    farmhand.write_specs([fake_spec("svc", free_port(), "--fail-unless", str(marker), max_failures=2, backoff=0.02)])
    first = farmhand.run("up")
    assert first.returncode == 1 and "fixed is missing" in first.stderr, first.stderr
    assert json.loads(farmhand.run("status", "--json").stdout)["runtimes"][0]["state"] == "failed"
    marker.write_text("")  # the cause is fixed
    again = farmhand.json("up")
    (rt,) = again["runtimes"]
    assert again["status"] == "ok" and rt["state"] == "ready" and again["epoch"] == 1
    assert len(supervisors(farmhand)) == 1
    farmhand.run("down", check=True)
