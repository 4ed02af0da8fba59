"""`make deploy` under a real systemd (booted for the test in namespaces: tests/systemd_boot.py),
with the real llama-server and the real Gemma: READY=1 only once the runtime answers, the journal,
a SIGKILLed supervisor restarted without an orphan or a double, stop leaving an empty cgroup, the
hardening really in force for the runtimes, a re-deploy that rewrites nothing and keeps the
admin's drop-in, and destroy removing the unit and its enablement and nothing of the admin's."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import uuid
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import GEMMA, REPO, WHEELHOUSE, home_processes, pid_gone, wait_for
from systemd_boot import BootedSystemd, why_not

pytestmark = pytest.mark.e2e
UNIT = "farmhand.service"
REASON = why_not()


@pytest.fixture(scope="module")
def booted(tmp_path_factory):
    if REASON:
        pytest.skip(REASON)
    log = tmp_path_factory.mktemp("systemd") / "console.log"
    system = BootedSystemd([REPO], log)
    system.boot()
    yield system
    system.poweroff()


@pytest.fixture
def site(booted, gemma_gguf, llama_wheel):
    """A farmhand home and project for the unit (outside /tmp: the booted system has its own)."""
    root = REPO / ".cache" / f"systemd-test-{uuid.uuid4().hex[:8]}"
    home, project = root / "home", root / "project"
    project.mkdir(parents=True)
    (home / "config").mkdir(parents=True)
    (home / "config" / "overrides.yaml").write_text(yaml.safe_dump({
        "models": {"gemma3-270m": {"sources": [f"file://{gemma_gguf}"], "sha256": GEMMA["sha256"]}}}))
    env = os.environ | {"FARMHAND_HOME": str(home), "FARMHAND_WHEELHOUSE": str(WHEELHOUSE), "PYTHONUNBUFFERED": "1"}
    env.pop("NOTIFY_SOCKET", None)
    yield {"home": home, "project": project, "env": env, "etc": booted.etc_copy}
    booted.run(["systemctl", "stop", UNIT], check=False)
    booted.run([sys.executable, "-m", "supervisor", "destroy", "--yes", "--purge-models"], env=env, check=False)
    left = home_processes(home)
    for proc in left:
        proc.kill()
    shutil.rmtree(root, ignore_errors=True)
    assert not left, f"left processes behind: {[p.cmdline() for p in left]}"


def deploy(booted, site) -> str:
    out = booted.run(["make", "-C", str(REPO), "deploy", f"ARGS=--project-dir {site['project']}"], env=site["env"])
    return out.stdout


def runtime_processes(home: Path) -> list[psutil.Process]:
    return [p for p in home_processes(home) if p.name() == "llama-server"]


def unit_of(pid: int) -> str:
    return Path(f"/proc/{pid}/cgroup").read_text()


def journal(booted) -> list[dict]:
    out = booted.run(["journalctl", "-u", UNIT, "-o", "json", "--no-pager"]).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def answers(booted, url: str) -> None:
    """The real chat check, run inside the booted system's network (its own loopback)."""
    code = (f"import sys; sys.path.insert(0, {str(REPO / 'tests')!r}); from checks import assert_real_gemma_answers; "
            f"assert_real_gemma_answers({url!r}, 'gemma3-270m')")
    booted.run([sys.executable, "-c", code], namespaces="-n")


def test_make_deploy_under_a_real_systemd(booted, site):
    home, etc = site["home"], site["etc"]

    # 1. make deploy: installed, enabled, started; `systemctl start` returned only after READY=1.
    said = deploy(booted, site)
    assert re.search(r"deploy: /etc/systemd/system/farmhand.service installed", said), said
    show = booted.show(UNIT, "ActiveState", "SubState", "Type", "MainPID", "NRestarts", "UnitFileState")
    assert (show["ActiveState"], show["SubState"], show["Type"], show["UnitFileState"]) == \
        ("active", "running", "notify", "enabled"), show
    status = booted.run(["systemctl", "status", UNIT, "--no-pager"]).stdout
    assert "active (running)" in status, status
    (runtime,) = runtime_processes(home)
    assert UNIT in unit_of(runtime.pid), "the runtime runs in the unit's cgroup"
    (spec,) = json.loads((home / "state" / "runtimes.json").read_text())["runtimes"]
    port = spec["port"]
    # Answers at once, no retry: the start job finished only after READY=1.
    health = booted.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{port}/health"],
                        namespaces="-n").stdout
    assert health == "200", f"systemctl start returned before the runtime answered: /health {health}"
    entries = journal(booted)
    messages = [e.get("MESSAGE") for e in entries]
    ready_line = next(i for i, e in enumerate(entries) if str(e.get("MESSAGE", "")).startswith("farmhand: ready:"))
    started = next(i for i, e in enumerate(entries) if e.get("JOB_TYPE") == "start" and e.get("JOB_RESULT") == "done")
    runtime_ready = next(i for i, m in enumerate(messages) if re.match(r"farmhand: \S+: starting -> ready", str(m)))
    assert runtime_ready < ready_line < started, "READY=1 must follow the runtime's readiness"
    assert int(entries[runtime_ready]["__MONOTONIC_TIMESTAMP"]) <= int(entries[started]["__MONOTONIC_TIMESTAMP"])

    # 2. The hardening holds for the runtime, and it still serves under it.
    in_runtime = ["nsenter", "-t", str(runtime.pid), "-m"]
    probe = booted.run([*in_runtime, "touch", "/usr/.farmhand-probe"], check=False, namespaces="")
    assert probe.returncode != 0 and "Read-only file system" in probe.stderr, probe.stderr
    state_probe = home / "state" / ".farmhand-probe"
    booted.run([*in_runtime, "touch", str(state_probe)], namespaces="")
    state_probe.unlink()
    security = booted.run(["systemd-analyze", "security", UNIT, "--no-pager"], check=False).stdout
    score = re.search(r"Overall exposure level for farmhand.service:\s*([\d.]+)\s*(\w+)", security)
    assert score, security[-1500:]
    print(f"\nsystemd-analyze security: {score.group(1)} {score.group(2)}")
    (REPO / ".cache" / "systemd-security.txt").write_text(security)
    assert float(score.group(1)) < 7.0, f"exposure {score.group(1)}: the unit's hardening regressed"
    answers(booted, f"http://127.0.0.1:{port}/v1")

    # 3. SIGKILL the supervisor: systemd restarts it, the old runtime goes, one new one serves.
    old_main, old_runtime = int(show["MainPID"]), runtime.pid
    booted.run(["systemctl", "kill", "-s", "KILL", "--kill-who=main", UNIT])
    wait_for(lambda: booted.show(UNIT, "NRestarts")["NRestarts"] == "1" and
             booted.show(UNIT, "ActiveState")["ActiveState"] == "active", timeout=90, what="systemd's restart")
    assert int(booted.show(UNIT, "MainPID")["MainPID"]) not in (0, old_main)
    assert pid_gone(old_runtime), \
        "the killed supervisor's runtime was left orphaned"
    wait_for(lambda: len(runtime_processes(home)) == 1, timeout=60, what="one runtime after the restart")
    (runtime,) = runtime_processes(home)
    assert UNIT in unit_of(runtime.pid)
    answers(booted, f"http://127.0.0.1:{port}/v1")

    # 4. A re-deploy rewrites nothing and keeps the admin's drop-in.
    unit_file = etc / UNIT
    before = unit_file.stat()
    dropin = etc / f"{UNIT}.d" / "override.conf"
    dropin.parent.mkdir()
    dropin.write_text("[Service]\nEnvironment=FARMHAND_ADMIN_NOTE=kept\n")
    booted.run(["systemctl", "daemon-reload"])
    booted.run(["systemctl", "restart", UNIT])
    main_before = booted.show(UNIT, "MainPID")["MainPID"]
    said = deploy(booted, site)
    assert "farmhand.service unchanged" in said, said
    after = unit_file.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), "an unchanged unit was rewritten"
    assert dropin.read_text() == "[Service]\nEnvironment=FARMHAND_ADMIN_NOTE=kept\n"
    assert "FARMHAND_ADMIN_NOTE=kept" in booted.show(UNIT, "Environment")["Environment"]
    assert booted.show(UNIT, "MainPID")["MainPID"] == main_before, "an unchanged deploy restarted the service"

    # 5. stop leaves nothing of the unit's cgroup.
    booted.run(["systemctl", "stop", UNIT])
    assert booted.show(UNIT, "ActiveState")["ActiveState"] == "inactive"
    assert not home_processes(home), [p.cmdline() for p in home_processes(home)]
    assert not [p for p in psutil.process_iter() if _in_unit(p)], "a process of the unit's cgroup outlived stop"

    # 6. destroy (on a running unit) removes the unit and its enablement, nothing of the admin's.
    booted.run(["systemctl", "start", UNIT])
    booted.run([sys.executable, "-m", "supervisor", "destroy", "--yes"], env=site["env"])
    assert not unit_file.exists()
    assert not (etc / "multi-user.target.wants" / UNIT).exists(), "the enablement symlink outlived destroy"
    assert dropin.read_text() == "[Service]\nEnvironment=FARMHAND_ADMIN_NOTE=kept\n", "destroy touched the drop-in"
    assert booted.show(UNIT, "ActiveState")["ActiveState"] == "inactive"
    assert not home_processes(home)


def _in_unit(proc: psutil.Process) -> bool:
    try:
        return f"/{UNIT}" in Path(f"/proc/{proc.pid}/cgroup").read_text()
    except OSError:
        return False
