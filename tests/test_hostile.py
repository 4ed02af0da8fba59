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
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import fake_spec, free_port, home_processes, pid_gone, wait_for

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
    wait_for(lambda: pid_gone(leader),
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


# --- damaged state files ---------------------------------------------------------------------------

DAMAGE = {
    "garbage": b"\x00\xffnot json at all",
    "truncated": b'{"pid": 12',
    "wrong shape (a list)": b"[1, 2, 3]",
    "wrong types": b'{"pid": "x", "create_time": [], "host": 5, "port": "p"}',
    "not UTF-8": b'{"pid": "\xff\xfe"}',
}


def _supervisor_pid(farmhand) -> int:
    return next(p.pid for p in home_processes(farmhand.home) if p.cmdline()[-2:] == ["supervisor", "run"])


def test_a_damaged_supervisor_record_never_makes_a_running_supervisor_look_stopped(farmhand, capsys):
    tally = Tally(capsys, "damaged supervisor.json")
    port = free_port()
    farmhand.write_specs([fake_spec("svc", port)])
    record = farmhand.home / "state" / "supervisor.json"
    for damage, content in DAMAGE.items():
        farmhand.run("up", check=True)
        pid = _supervisor_pid(farmhand)
        record.write_bytes(content)
        status = farmhand.run("status", "--json")
        body = json.loads(status.stdout) if status.stdout.strip() else {}
        tally.check(f"{damage}: status sees it running", body.get("status") == "ok"
                    and (body.get("supervisor") or {}).get("pid") == pid, f"{status.returncode} {status.stdout[-300:]}")
        up = farmhand.run("up", "--json")
        tally.check(f"{damage}: up does not start a second one", up.returncode == 0 and
                    [p.pid for p in home_processes(farmhand.home) if p.cmdline()[-2:] == ["supervisor", "run"]] == [pid],
                    up.stderr[-300:])
        down = farmhand.run("down", "--json")
        gone = wait_for(lambda pid=pid: pid_gone(pid),
                        timeout=20, what="the supervisor to stop") if down.returncode == 0 else False
        tally.check(f"{damage}: down stops it and says so", down.returncode == 0 and json.loads(down.stdout)["stopped"]
                    and gone and not home_processes(farmhand.home), down.stderr[-300:])
    # destroy with a damaged record: nothing left listening
    farmhand.run("up", check=True)
    record.write_bytes(DAMAGE["garbage"])
    destroy = farmhand.run("destroy", "--yes", "--json")
    tally.check("garbage: destroy leaves nothing running", destroy.returncode == 0 and not home_processes(farmhand.home)
                and not _listening(port), destroy.stderr[-300:])
    tally.report()


def _listening(port: int) -> bool:
    from supervisor.ports import is_free

    return not is_free(port)


def test_a_damaged_ledger_does_not_block_down_or_destroy(farmhand, capsys):
    tally = Tally(capsys, "damaged ledger.json")
    port = free_port()
    ledger = farmhand.home / "state" / "ledger.json"
    damages = dict(DAMAGE, **{"wrong types": b'{"version": 2, "artifacts": [], "projects": "x"}',
                              "resources not a list": b'{"version": 2, "resources": "x"}',
                              "a resource without a path": b'{"version": 2, "resources": [{"kind": "dir"}]}'})
    for damage, content in damages.items():
        for command in ("down", "destroy"):
            farmhand.write_specs([fake_spec("svc", port)])
            ledger.unlink(missing_ok=True)
            farmhand.run("up", check=True)
            ledger.write_bytes(content)
            proc = farmhand.run(*([command] if command == "down" else [command, "--yes"]))
            stopped = wait_for(lambda: not home_processes(farmhand.home), timeout=20, what="runtimes to stop") \
                if proc.returncode == 0 else False
            tally.check(f"{damage}: {command} stops the runtimes", proc.returncode == 0 and stopped and
                        not _listening(port), proc.stderr[-300:])
            tally.check(f"{damage}: {command} says what is wrong", "ledger" in proc.stderr and "Traceback" not in
                        proc.stderr, proc.stderr[-300:])
        ledger.parent.mkdir(parents=True, exist_ok=True)
        ledger.write_bytes(content)
        plan = farmhand.run("plan", "--profile", "cpu-small")
        err = [line for line in plan.stderr.splitlines() if line.startswith("farmhand: error:")]
        tally.check(f"{damage}: plan says how to recover", plan.returncode == 2 and len(err) == 1 and
                    "mv " in err[0], plan.stderr[-300:])
    tally.report()


# --- bad input that would hang or inject --------------------------------------------------------------

BOMB = "".join(f"{chr(97 + i)}: &{chr(97 + i)} [" + ",".join([f"*{chr(96 + i)}"] * 9 if i else ['"lol"'] * 9) + "]\n"
               for i in range(9))


def test_yaml_alias_bombs_are_refused_in_one_line(farmhand, tmp_path, capsys):
    tally = Tally(capsys, "YAML alias bomb")
    assert len(BOMB) < 450  # a few hundred bytes, as the trial's
    overrides = tmp_path / "bomb.yaml"
    overrides.write_text(BOMB)
    for where, args in (("overrides", ["plan", "--overrides", str(overrides)]), ("llamafarm.yaml", ["plan"])):
        if where == "llamafarm.yaml":
            (farmhand.project / "llamafarm.yaml").write_text("version: v1\nname: x\nnamespace: default\n" + BOMB)
        proc = farmhand.run(*args, "--profile", "cpu-small", timeout=60)
        err = [line for line in proc.stderr.splitlines() if line.startswith("farmhand: error:")]
        tally.check(f"in {where}: exit 2, one line naming file and line", proc.returncode == 2 and len(err) == 1 and
                    "aliases" in err[0] and ":" in err[0], proc.stderr[-300:])
    tally.report()


def test_a_pip_source_is_a_requirement_never_pip_options(farmhand, capsys):
    tally = Tally(capsys, "pip:// option injection")
    for uri in ("pip://-rhttp://127.0.0.1:9/reqs.txt", "pip://--index-url=http://127.0.0.1:9/simple",
                "pip://x==1.0 --extra-index-url http://127.0.0.1:9", "pip://../../etc/passwd", "pip://x==1.0;rm"):
        proc = farmhand.run("models", "pull", uri, "--name", "x", timeout=60)
        err = [line for line in proc.stderr.splitlines() if line.startswith("farmhand: error:")]
        tally.check(uri, proc.returncode == 2 and len(err) == 1 and "pip://NAME==VERSION" in err[0],
                    f"exit {proc.returncode}: {proc.stderr[-300:]}")
    tally.report()


# --- the supervisor's /health under load and from a foreign page -----------------------------------------

def test_health_answers_500_concurrent_probes_and_refuses_a_foreign_host(farmhand, capsys):
    import concurrent.futures
    import http.client

    tally = Tally(capsys, "/health under load")
    farmhand.write_specs([fake_spec("svc", free_port())])
    farmhand.run("up", check=True)
    record = json.loads((farmhand.home / "state" / "supervisor.json").read_text())

    def probe(host_header: str | None = None) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", record["port"], timeout=30)
        try:
            conn.putrequest("GET", "/health", skip_host=host_header is not None)
            if host_header is not None:
                conn.putheader("Host", host_header)
            conn.endheaders()
            return conn.getresponse().status
        except OSError as exc:
            return -abs(exc.errno or 1)
        finally:
            conn.close()

    with concurrent.futures.ThreadPoolExecutor(max_workers=500) as pool:
        codes = list(pool.map(lambda _: probe(), range(500)))
    failed = [c for c in codes if c != 200]
    tally.check("500 concurrent GETs all answered 200", not failed, f"{len(failed)} failed: {sorted(set(failed))}")
    for host in ("evil.example", "evil.example:80", "127.0.0.1.nip.io"):
        tally.check(f"Host: {host} refused", probe(host) == 403, "answered")
    for host in (f"127.0.0.1:{record['port']}", f"localhost:{record['port']}", "[::1]"):
        tally.check(f"Host: {host} served", probe(host) == 200, "refused")
    tally.report()


def test_destroy_finishes_with_a_dangling_backup_link_in_the_project(farmhand, tmp_path):
    """A planted dangling link named like one of farmhand's backups made every destroy fail."""
    from supervisor import llamafarm

    project = farmhand.project
    (project / "llamafarm.yaml").write_text("version: v1\nname: mine\nnamespace: default\n")
    os.symlink(tmp_path / "nowhere", project / "llamafarm.yaml.farmhand-backup-20260101T000000")
    ledger = farmhand.home / "state" / "ledger.json"
    ledger.parent.mkdir(parents=True)
    ledger.write_text(json.dumps({"version": 2, "projects": {str(project / "llamafarm.yaml"): {
        "created": False, "managed": ["default"], "default_written": "default"}}}))
    farmhand.run("plan", "--profile", "cpu-small", check=True)  # fills the memo cache
    proc = farmhand.run("destroy", "--yes", "--json")
    assert proc.returncode == 0, proc.stderr
    assert not (farmhand.home / "state").exists()
    assert not (farmhand.home / "cache").exists()  # no memo.json written back after destroy
    assert (project / "llamafarm.yaml").is_file()
    assert llamafarm.load_existing(project / "llamafarm.yaml")["name"] == "mine"


# --- bad input: one line, the documented exit code, nothing hangs ---------------------------------------

def test_bad_input_gets_one_line_and_its_exit_code(farmhand, tmp_path, capsys):
    tally = Tally(capsys, "bad input, one line")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "adir").mkdir()
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("models: {caf\xe9: null}\n".encode("latin-1"))
    gguf = "file:///nonexistent.gguf"
    facts = json.loads(farmhand.run("detect", "--json", check=True).stdout)
    facts["memory"]["total_bytes"] = "lots"
    bad_facts = tmp_path / "facts.json"
    bad_facts.write_text(json.dumps(facts))
    path_args = tmp_path / "path-args.yaml"
    path_args.write_text("deployment: {runtimes: {llama-server: {args: [--log-file=/etc/cron.d/x]}}}\n")
    cases = [  # (what, argv, extra env, exit code, words the line must hold)
        ("a FIFO as a model", ["models", "pull", f"file://{fifo}", "--name", "x"], {}, 2, "is a FIFO"),
        ("a device as a model", ["models", "pull", "file:///dev/zero", "--name", "x"], {}, 2, "is a device"),
        ("a directory as a model", ["models", "pull", f"file://{tmp_path / 'adir'}", "--name", "x"], {}, 2,
         "is a directory"),
        ("hf:// escaping the repo", ["models", "pull", "hf://../../x"], {}, 2, "hf://ORG/REPO"),
        ("FARMHAND_FETCH_CHUNK=0", ["models", "pull", gguf, "--name", "x"], {"FARMHAND_FETCH_CHUNK": "0"}, 2,
         "FARMHAND_FETCH_CHUNK"),
        ("FARMHAND_FETCH_STALL_S=nan", ["models", "pull", gguf, "--name", "x"], {"FARMHAND_FETCH_STALL_S": "nan"}, 2,
         "FARMHAND_FETCH_STALL_S"),
        ("a junk mirror", ["plan", "--profile", "cpu-small"], {"FARMHAND_MIRROR_HTTPS": "::junk::"}, 2,
         "FARMHAND_MIRROR_HTTPS"),
        ("FARMHAND_HOME=/", ["plan", "--profile", "cpu-small"], {"FARMHAND_HOME": "/"}, 2, "FARMHAND_HOME=/"),
        ("one runtime, two ports", ["plan", "--profile", "cpu-small", "--port", "12001", "--port", "12002"], {}, 2,
         "12001 and 12002"),
        ("--facts with a wrong inner type", ["plan", "--facts", str(bad_facts)], {}, 2,
         "memory.total_bytes: 'lots' is not of type"),
        ("args naming a path", ["plan", "--profile", "cpu-small", "--overrides", str(path_args)], {}, 2,
         "--log-file is set by farmhand"),
        ("overrides that are not UTF-8", ["plan", "--profile", "cpu-small", "--overrides", str(latin)], {}, 2,
         "not UTF-8"),
    ]
    for what, argv, env, code, words in cases:
        proc = farmhand.run(*argv, env=env, timeout=60)
        err = [line for line in proc.stderr.splitlines() if line.startswith("farmhand: error:")]
        tally.check(what, proc.returncode == code and len(err) == 1 and words in err[0] and "Traceback" not in
                    proc.stderr, f"exit {proc.returncode}: {proc.stderr[-300:]}")
    proc = farmhand.run("plan", "--profile", "cpu-small", "--port", "1", "--port", "2", "--json")
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        doc = {}
    tally.check("--json: an error is one JSON document on stdout", doc.get("status") == "error" and
                doc.get("exit_code") == proc.returncode == 2, proc.stdout[-300:])
    assert not (Path("/") / "cache" / "memo.json").exists()
    tally.report()


def test_destroy_leaves_the_users_file_as_it_was_and_no_backups(tmp_path):
    from supervisor import llamafarm, projectfs

    path = tmp_path / "llamafarm.yaml"
    user = "# mine\nversion: v1\nname: shop\nnamespace: acme\nprompts:\n  - name: a\n    messages: []\n"
    path.write_text(user)
    desired = ("version: v1\nname: x\nnamespace: default\nruntime:\n  default_model: default\n  models:\n"
               "    - {name: default, provider: openai, model: m, base_url: 'http://127.0.0.1:1/v1'}\n")
    llamafarm.write_merged(path, desired, set())
    assert "default" in path.read_text() and len(projectfs.backups(path)) == 1
    llamafarm.write_merged(path, "version: v1\nname: x\nnamespace: default\nruntime:\n  models: []\n", {"default"},
                           "default", teardown=True)
    doc = llamafarm.load_existing(path)
    assert "runtime" not in doc, path.read_text()
    assert doc["name"] == "shop" and "# mine" in path.read_text()
    assert projectfs.backups(path) == []


def test_a_driver_library_mismatch_is_named_with_its_fix():
    """The held-out laptop: the NVIDIA kernel module and userspace library disagree. nvidia-smi
    says so; plan --explain must too, not "no driver"."""
    from supervisor import profiles
    from supervisor.facts import probes
    from supervisor.facts.hostio import CommandResult, Host

    class Laptop(Host):
        def run(self, argv, timeout=2.0):
            return CommandResult(tuple(argv), 18, "Failed to initialize NVML: Driver/library version mismatch\n"
                                 "NVML library version: 570.133\n", "")

    nvidia = probes.probe_nvidia(Laptop())
    assert nvidia["reason"] == "nvidia-smi: driver/library version mismatch (reboot or reinstall the driver)"
    facts = probes.assemble({"nvidia": nvidia, "pci": {"gpus": [{"vendor": "nvidia", "name": "RTX 4060 Laptop",
                                                                 "pci_id": "10de:28e0"}], "source": "sysfs"}}, {})
    (gpu,) = facts["gpus"]
    holds, why = profiles._rule_gpu_driver(True, facts, {"gpu_vendor": ["nvidia"]})
    assert not holds and why == "GPU present, driver/library version mismatch (reboot or reinstall the driver)", why


def test_a_runtime_inherits_only_what_it_needs_and_what_it_declares(farmhand):
    """The caller's keys (HF_TOKEN, a cloud key) never reach a runtime that did not declare them."""
    port = free_port()
    spec = fake_spec("svc", port)
    spec["env"] = {"DECLARED_KEY": "${env:FH_DECLARED}"}
    farmhand.write_specs([spec])
    farmhand.run("up", check=True, env={"HF_TOKEN": "hf_secret", "OPENAI_API_KEY": "sk-secret",
                                        "FH_DECLARED": "mine", "LC_ALL": "C.UTF-8"})
    (runtime,) = [p for p in home_processes(farmhand.home) if f"--port {port}" in " ".join(p.cmdline())]
    env = runtime.environ()
    assert "HF_TOKEN" not in env and "OPENAI_API_KEY" not in env and "FH_DECLARED" not in env, sorted(env)
    assert env["DECLARED_KEY"] == "mine" and env["LC_ALL"] == "C.UTF-8" and "PATH" in env
    assert env.get("FARMHAND_SESSION") and env["FARMHAND_HOME"] == str(farmhand.home)


@pytest.mark.e2e
def test_a_port_chosen_with_port_stays_and_a_stranger_on_it_stops_apply(farmhand, llama_server_binary, gemma_gguf,
                                                                      tmp_path):
    """Ports never move silently: a --port is recorded even when the run that asked for it died
    after its runtime came up (the re-run finds nothing to do and records it), later plain applies
    keep it, and a stranger on it stops apply with exit 3 naming the holder, as README says."""
    overrides = tmp_path / "o.json"
    overrides.write_text(json.dumps({"supervisor": {"port": 0}, "deployment": {"runtimes": {"llama-server": {
        "install": {"method": "path"}}}}, "models": {"gemma3-270m": {"sources": [f"file://{gemma_gguf}"]}}}))
    env = {"PATH": f"{llama_server_binary.parent}{os.pathsep}{os.environ['PATH']}"}
    port = free_port()
    args = ["apply", "--yes", "--profile", "cpu-small", "--overrides", str(overrides)]
    farmhand.json(*args, "--port", str(port), env=env)
    ledger_file = farmhand.home / "state" / "ledger.json"
    ledger = json.loads(ledger_file.read_text())
    ledger.pop("ports", None), ledger.pop("asked_ports", None)  # as if killed after the runtime came up
    ledger_file.write_text(json.dumps(ledger))
    again = farmhand.json(*args, "--port", str(port), env=env)
    assert not again["changed"]
    assert json.loads(ledger_file.read_text()).get("ports", {}).get("llama-server") == port  # recorded all the same
    config = (farmhand.project / "llamafarm.yaml").read_text()
    plain = farmhand.json(*args, env=env)
    assert not plain["changed"] and plain["url"] == f"http://127.0.0.1:{port}/v1", plain["url"]
    assert (farmhand.project / "llamafarm.yaml").read_text() == config
    farmhand.run("down", check=True, env=env)
    stranger = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _listening(port), what="the stranger to listen")
        proc = farmhand.run(*args, env=env)
        assert proc.returncode == 3, proc.stderr
        assert f"port {port}" in proc.stderr and f"pid {stranger.pid}" in proc.stderr and "--port" in proc.stderr
        assert (farmhand.project / "llamafarm.yaml").read_text() == config  # nothing moved
        assert stranger.poll() is None  # and never killed
    finally:
        stranger.terminate()
        stranger.wait(10)
    farmhand.run("destroy", "--yes", env=env)


def test_a_stranger_on_the_supervisors_port_is_a_conflict_and_files_are_owner_only(farmhand, stranger):
    port, proc = stranger
    farmhand.write_specs([fake_spec("svc", free_port())], supervisor_port=port)
    up = farmhand.run("up")
    err = [line for line in up.stderr.splitlines() if line.startswith("farmhand: error:")]
    assert up.returncode == 3 and err, up.stderr  # README: a port held by someone else is exit 3
    assert f"held by pid {proc.pid}" in up.stderr and proc.poll() is None  # named, never killed
    farmhand.write_specs([fake_spec("svc", free_port())])
    farmhand.run("up", check=True)
    log = farmhand.home / "state" / "logs" / "supervisor.log"
    assert stat.S_IMODE(log.stat().st_mode) == 0o600, oct(log.stat().st_mode)


def test_a_changed_or_linked_bundle_member_is_a_verification_failure(tmp_path):
    """Exit 4 as README says, for a member whose bytes changed and for one that is a link."""
    import io
    import tarfile

    from supervisor import bundle
    from supervisor.errors import EXIT_VERIFY, FarmhandError

    data = b"wheel bytes"
    tar_path = tmp_path / "b.tar"
    manifest = {"format": bundle.FORMAT, "members": {f"{bundle.ROOT}/wheels/x.whl": "0" * 64}}
    with tarfile.open(tar_path, "w") as tar:
        for name, payload in ((bundle.MANIFEST, json.dumps(manifest).encode()), (f"{bundle.ROOT}/wheels/x.whl", data)):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        link = tarfile.TarInfo(f"{bundle.ROOT}/models/link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
        tar.addfile(link)
    reader = bundle.Bundle.__new__(bundle.Bundle)
    reader.path, reader._tar = tar_path, tarfile.open(tar_path)
    reader.manifest = type("M", (), {"members": manifest["members"]})()
    for member, words in ((f"{bundle.ROOT}/wheels/x.whl", "has sha256"), (f"{bundle.ROOT}/models/link",
                                                                         "not a regular file")):
        with pytest.raises(FarmhandError) as caught:
            reader.extract_verified(member, tmp_path / "out")
        assert caught.value.exit_code == EXIT_VERIFY and words in str(caught.value), str(caught.value)
        assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


@pytest.mark.parametrize("code", [0, 1])
def test_bootstrap_shows_pips_chatter_only_when_pip_failed(tmp_path, monkeypatch, capfd, code):
    """The first screen a new user sees is farmhand's: pip's warnings about this machine's index
    configuration appear only when the install failed (or with --debug)."""
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("bootstrap_under_test", REPO / "bootstrap.py")
    boot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(boot)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    pip = venv / "bin" / "python"  # stands in for the venv's pip: prints what pip printed here
    pip.write_text(f"#!/bin/sh\necho \"WARNING: Location 'file:///opt/pypi-more/simple/x/' is ignored\"\nexit {code}\n")
    pip.chmod(0o755)
    monkeypatch.setattr(boot, "VENV", str(venv))
    monkeypatch.setattr(boot, "STAMP", str(venv / ".stamp"))
    monkeypatch.setattr(sys, "argv", ["bootstrap.py"])
    monkeypatch.delenv("FARMHAND_DEBUG", raising=False)
    if code == 0:
        boot.ensure_venv("fp")
    else:
        with pytest.raises(SystemExit) as exited:
            boot.ensure_venv("fp")
        assert exited.value.code == 6
    seen = capfd.readouterr()
    screen = seen.out + seen.err
    assert ("WARNING: Location" in screen) is (code != 0), screen
    assert "bootstrap: installing farmhand" in seen.err


SCRATCH_PLANTS = {
    "a link to a directory of the attacker's": lambda p, elsewhere: p.symlink_to(elsewhere, target_is_directory=True),
    "a directory open to others": lambda p, elsewhere: (p.mkdir(), p.chmod(0o777)),
    "a file": lambda p, elsewhere: p.write_text("x"),
    "another user's directory": lambda p, elsewhere: (p.mkdir(mode=0o700), os.chown(p, 65534, 65534)),
}


@pytest.mark.parametrize("plant", SCRATCH_PLANTS)
def test_a_scratch_dir_planted_in_tmp_is_refused_never_used(tmp_path, plant):
    """A home too deep for Unix socket paths keeps a runtime's scratch in /tmp, where anyone can
    make the name first: what is there and not this user's own private directory is refused."""
    from supervisor.ledger import Ledger
    from supervisor.paths import Paths
    from supervisor.steps import Context, DirStep

    if plant == "another user's directory" and os.geteuid() != 0:
        pytest.skip("another owner needs root")
    deep = tmp_path / ("d" * 80)
    paths = Paths(deep / "data", deep / "state", deep / "config", deep / "cache", "home")
    scratch = paths.runtime_scratch("vllm-cpu")
    assert str(scratch).startswith("/tmp/farmhand-"), scratch
    elsewhere = tmp_path / "attacker"
    elsewhere.mkdir()
    try:
        SCRATCH_PLANTS[plant](scratch, elsewhere)
        step = DirStep("scratch:vllm-cpu", scratch, kind="dir")
        ctx = Context(paths, Ledger(paths), None, tmp_path)
        assert not step.check(ctx).up_to_date, "a planted scratch counts as in place"
        with pytest.raises(FarmhandError) as refused:
            step.preflight(ctx)
        assert refused.value.exit_code == EXIT_ENVIRONMENT and str(scratch) in str(refused.value)
        assert list(elsewhere.iterdir()) == [], "something was written through the plant"
    finally:
        if scratch.is_symlink() or scratch.is_file():
            scratch.unlink()
        elif scratch.is_dir():
            scratch.rmdir()
