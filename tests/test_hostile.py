"""What the hostile trial broke, one class per test group, each attack tried against every
command that could fall for it. Each group prints "tried/held" and fails on any attack that was
not held, naming it.

- a stranger at a recorded pid: farmhand's state names a pid (processes.json, the ledger's
  helpers) that now belongs to someone else's session; no farmhand command may signal it.
- a planted link: another local user prepares names in a project directory farmhand writes to;
  farmhand must never write through them, and refuses a directory others can write to.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time

import psutil
import pytest
from conftest import fake_spec, free_port, home_processes, wait_for

from supervisor.errors import EXIT_ENVIRONMENT, FarmhandError


class Tally:
    """Counts attacks tried and held; prints them; fails naming each one that was not held."""

    def __init__(self, capsys, group: str):
        self.capsys, self.group, self.tried, self.failed = capsys, group, 0, []

    def check(self, name: str, held: bool, detail: str = "") -> None:
        self.tried += 1
        if not held:
            self.failed.append(f"{name}: {detail}")

    def report(self) -> None:
        with self.capsys.disabled():
            print(f"\n  hostile {self.group}: {self.tried - len(self.failed)}/{self.tried} held", end="")
        assert not self.failed, "attacks not held:\n" + "\n".join(self.failed)


# --- a stranger at a recorded pid -----------------------------------------------------------------

def _alive(proc: psutil.Process) -> bool:
    return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE


def _stranger_leader() -> tuple[subprocess.Popen, psutil.Process]:
    """`setsid sleep`: a session leader farmhand did not start."""
    popen = subprocess.Popen(["sleep", "902"], start_new_session=True)
    return popen, psutil.Process(popen.pid)


def _stranger_orphan() -> tuple[int, psutil.Process]:
    """A stranger's session whose leader exited and left a member: (the dead leader's pid, the member)."""
    out = subprocess.run(["setsid", "sh", "-c", "sleep 903 >/dev/null 2>&1 & echo $$ $!"], capture_output=True, text=True, check=True,
                         stdin=subprocess.DEVNULL)
    leader, member = (int(x) for x in out.stdout.split())
    wait_for(lambda: not psutil.pid_exists(leader) or psutil.Process(leader).status() == psutil.STATUS_ZOMBIE,
             what="the stranger's leader to exit")
    return leader, psutil.Process(member)


def _records(pid: int, create_time: float, **extra) -> dict:
    return {"pid": pid, "create_time": create_time, "sid": pid, **extra}


def _plant(farmhand, record: dict) -> None:
    state = farmhand.home / "state"
    state.mkdir(parents=True, exist_ok=True)
    (state / "processes.json").write_text(json.dumps({"runtimes": {"svc": record}}))
    ledger = state / "ledger.json"
    data = json.loads(ledger.read_text()) if ledger.exists() else {"version": 2}
    data["helpers"] = [record]
    ledger.write_text(json.dumps(data))


def test_a_stranger_at_a_recorded_pid_is_never_signalled(farmhand, capsys):
    tally = Tally(capsys, "stranger at a recorded pid")
    port = free_port()
    # Each way a recorded identity can name a stranger: the pid reused by a new session leader
    # (an older start time), the same pid and start time with another executable, and a session
    # whose leader is gone with a stranger's member in it (with and without a session token).
    attacks = {
        "pid reused by a session leader": lambda: (lambda p: (p, _records(p[1].pid, p[1].create_time() - 100)))(
            _stranger_leader()),
        "same start time, another executable": lambda: (lambda p: (p, _records(
            p[1].pid, p[1].create_time(), exe="/opt/farmhand/llama-server")))(_stranger_leader()),
        "leader gone, a stranger in its session": lambda: (lambda o: ((None, o[1]), _records(
            o[0], o[1].create_time() - 1)))(_stranger_orphan()),
        "leader gone, a stranger without the token": lambda: (lambda o: ((None, o[1]), _records(
            o[0], o[1].create_time() - 1, token="0" * 32)))(_stranger_orphan()),
    }
    try:
        for attack, make in attacks.items():
            for command in (["down"], ["up"], ["destroy", "--yes"], ["status"]):
                (popen, victim), record = make()
                try:
                    farmhand.write_specs([fake_spec("svc", port)])  # destroy removed them
                    _plant(farmhand, record)
                    proc = farmhand.run(*command, "--json")
                    held = _alive(victim)
                    tally.check(f"{attack} / farmhand {' '.join(command)}", held,
                                f"pid {victim.pid} was killed (exit {proc.returncode}: {proc.stderr[-300:]})")
                    if command == ["up"]:
                        farmhand.run("down", check=True)
                        tally.check(f"{attack} / farmhand up then down", _alive(victim), f"pid {victim.pid} killed")
                finally:
                    victim.kill()
                    if popen is not None:
                        popen.wait(10)
    finally:
        tally.report()


def test_a_runtime_left_by_a_killed_supervisor_is_still_reaped(farmhand):
    """The other side of the rule: a runtime's background child whose leader and supervisor were
    SIGKILLed carries the session token, so `down` finds and stops it."""
    port = free_port()
    farmhand.write_specs([fake_spec("svc", port, "--fork-child")])
    farmhand.run("up", check=True)
    child = wait_for(lambda: next((p for p in home_processes(farmhand.home) if "--child" in p.cmdline()), None),
                     what="the runtime's background child")
    supervisor = json.loads((farmhand.home / "state" / "supervisor.json").read_text())["pid"]
    leader = next(p for p in home_processes(farmhand.home) if f"--port {port}" in " ".join(p.cmdline()))
    os.kill(supervisor, signal.SIGKILL)
    leader.kill()
    wait_for(lambda: not _alive(leader), what="the runtime's leader to die")
    assert _alive(child)
    assert os.getsid(child.pid) == leader.pid  # its session's leader is gone: only the token vouches for it
    result = farmhand.json("down")
    assert child.pid in result["reaped"], result
    wait_for(lambda: not _alive(child), what="the orphaned child to be reaped")


# --- a planted link ---------------------------------------------------------------------------------

def test_planted_links_in_a_project_dir_are_never_followed(farmhand, tmp_path, capsys):
    """Another user prepares names farmhand writes in the project dir (the backup, the temp file,
    llamafarm.yaml itself) as links to a file of theirs or to a place they want a file created.
    apply and destroy must write none of those targets and leave the user's file intact."""
    from supervisor import llamafarm

    tally = Tally(capsys, "planted link in a project dir")
    victim_dir = tmp_path / "victim"
    victim_dir.mkdir()
    existing = "version: v1\nname: mine\nnamespace: default\nruntime:\n  models: []\n# the user's comment\n"
    names = {
        "every backup name of this minute": lambda stamp: [f"llamafarm.yaml.farmhand-backup-{stamp}"] + [
            f"llamafarm.yaml.farmhand-backup-{stamp}-{n}" for n in range(1, 4)],
        "the temp names": lambda stamp: [f".llamafarm.yaml.{n}.tmp" for n in range(4)],
    }
    for attack, planted in names.items():
        for target_exists in (False, True):
            project = tmp_path / f"p-{len(tally.failed)}-{tally.tried}"
            project.mkdir(mode=0o755)
            (project / "llamafarm.yaml").write_text(existing)
            target = victim_dir / f"cron-{tally.tried}"
            if target_exists:
                target.write_text("victim's own\n")
            stamps = {time.strftime("%Y%m%dT%H%M%S", time.localtime(time.time() + d)) for d in range(0, 3)}
            for name in {name for stamp in stamps for name in planted(stamp)}:
                os.symlink(target, project / name)
            rendered = existing.replace("models: []", "default_model: a\n  models: [{name: a, provider: openai, model: m}]")
            try:
                llamafarm.write_merged(project / "llamafarm.yaml", rendered, set())
                wrote = "name: a" in (project / "llamafarm.yaml").read_text()
            except (OSError, FarmhandError) as exc:
                wrote = f"refused: {exc}"
            outside = target.read_text() if target.exists() else None
            tally.check(f"{attack} ({'existing' if target_exists else 'dangling'} target)",
                        outside == ("victim's own\n" if target_exists else None) and wrote is True
                        and not (project / "llamafarm.yaml").is_symlink(),
                        f"target now {outside!r}, write: {wrote}")
            backups = [p for p in project.iterdir() if p.name.startswith("llamafarm.yaml.farmhand-backup-")
                       and not p.is_symlink()]
            tally.check(f"{attack}: the old file is backed up beside it", len(backups) == 1 and
                        backups[0].read_text() == existing, f"backups {backups}")
    # A link in place of llamafarm.yaml pointing at a file of another user's choosing.
    project = tmp_path / "p-config-link"
    project.mkdir(mode=0o755)
    target = victim_dir / "passwd"
    target.write_text("victim's own\n")
    os.symlink(target, project / "llamafarm.yaml")
    try:
        llamafarm.write_merged(project / "llamafarm.yaml", existing, set())
    except FarmhandError as exc:
        tally.check("llamafarm.yaml is a link: refused in one line", "is a symbolic link" in str(exc), str(exc))
    tally.check("llamafarm.yaml is a link", target.read_text() == "victim's own\n", f"target now {target.read_text()!r}")
    tally.report()


@pytest.mark.skipif(os.geteuid() != 0, reason="another owner needs root")
@pytest.mark.parametrize("how", ["world-writable", "group-writable, shared group", "owned by another user"])
def test_a_project_dir_others_can_write_is_refused_and_left_as_it_was(farmhand, tmp_path, how):
    project = farmhand.project
    (project / "llamafarm.yaml").write_text("version: v1\nname: mine\nnamespace: default\n")
    before = sorted(p.name for p in project.iterdir())
    if how == "world-writable":
        project.chmod(0o777)
    elif how.startswith("group"):
        os.chown(project, 0, 100)  # "users": a group with other members
        project.chmod(0o775)
    else:
        os.chown(project, 65534, 65534)
    proc = farmhand.run("apply", "--yes", "--profile", "cpu-small", "--no-wait")
    assert proc.returncode == EXIT_ENVIRONMENT, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("farmhand: error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert str(project) in lines[0] and "other users can write" in lines[0] and "nothing was changed" in lines[0]
    assert sorted(p.name for p in project.iterdir()) == before
    assert not (farmhand.home / "data" / "backends").exists()  # refused before anything was installed


def test_a_sticky_dir_owned_by_the_caller_is_accepted(tmp_path):
    from supervisor import projectfs

    project = tmp_path / "sticky"
    project.mkdir()
    project.chmod(0o1777)
    projectfs.check_dir(project)  # no error
    assert stat.S_IMODE(project.stat().st_mode) == 0o1777


def test_a_failed_backup_leaves_the_config_as_it_was(tmp_path, monkeypatch):
    from supervisor import projectfs

    path = tmp_path / "llamafarm.yaml"
    path.write_text("mine\n")
    real_open = os.open

    def no_backup(name, flags, mode=0o777, *, dir_fd=None):
        if "farmhand-backup" in str(name):
            raise OSError(28, "No space left on device", str(name))
        return real_open(name, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(projectfs.os, "open", no_backup)
    with pytest.raises(OSError):
        projectfs.write_config(path, "theirs\n", backup=True)
    assert path.read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["llamafarm.yaml"]
