"""The defects found in farmhand 0.1's middle, each pinned by a test that failed before its fix.
(The pip-cache variant build is in test_installers.py, the air-gapped NVIDIA plan in
test_profiles.py, the Gemma chat template in test_e2e.py and test_deployment.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from checks import one_line_error
from conftest import fake_spec, free_port, home_processes, wait_for

from supervisor import destroy as destroy_mod
from supervisor.errors import EXIT_BAD_INPUT, EXIT_CONFLICT
from supervisor.ledger import Ledger
from supervisor.paths import resolve
from supervisor.steps import Context, LauncherStep


@pytest.mark.parametrize("mode", ["user", "system", "home"])
def test_the_model_store_index_lives_in_the_model_store(mode, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    if mode == "home":
        monkeypatch.setenv("FARMHAND_HOME", str(tmp_path / "fh"))
    else:
        monkeypatch.delenv("FARMHAND_HOME", raising=False)
    paths = resolve(system=mode == "system")
    assert Ledger(paths).store_index == paths.models / "store.json"
    expected = {"user": tmp_path / ".local/share/farmhand/models/store.json",
                "system": Path("/opt/farmhand/models/store.json"),
                "home": tmp_path / "fh/data/models/store.json"}[mode]
    assert paths.store_index == expected


@pytest.mark.parametrize("how", ["--port 8000", "--port llama-server=11540", "overrides", "profile"])
def test_reserved_ports_are_refused_however_they_are_asked_for(farmhand, tmp_path, how):
    args = ["plan", "--profile", "cpu-small"]
    if how.startswith("--port"):
        args += how.split(" ", 1)
    elif how == "overrides":
        (tmp_path / "o.yaml").write_text("deployment: {runtimes: {llama-server: {port: 8000}}}\n")
        args += ["--overrides", str(tmp_path / "o.yaml")]
    else:
        profiles = tmp_path / "profiles"
        profiles.mkdir()
        text = (Path(__file__).parent.parent / "profiles" / "cpu-small.yaml").read_text()
        (profiles / "cpu-small.yaml").write_text(text.replace("variant: cpu}", "variant: cpu, port: 8000}"))
        args += ["--profiles-dir", str(profiles)]
    proc = farmhand.run(*args)
    assert proc.returncode == EXIT_BAD_INPUT, proc.stderr
    err = one_line_error(proc)
    assert "is reserved for LlamaFarm's" in err and ("8000" in err or "11540" in err)
    assert not (farmhand.home / "state").exists() and not (farmhand.project / "llamafarm.yaml").exists()


def test_a_supervisor_whose_port_is_taken_says_so_in_one_line(farmhand, stranger):
    """Before: a second farmhand home on the host crashed its supervisor with a traceback
    ("Address already in use") because the health port was fixed."""
    port, holder = stranger
    farmhand.write_specs([fake_spec("svc", free_port())], supervisor_port=port)
    proc = subprocess.run([sys.executable, "-m", "supervisor", "run"], env=farmhand.env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == EXIT_CONFLICT
    err = one_line_error(proc)
    assert f"the supervisor's port {port}" in err and f"pid {holder.pid}" in err
    assert holder.poll() is None
    assert not home_processes(farmhand.home)


@pytest.fixture
def quick_cpu_overrides(tmp_path, llama_server_binary, gemma_gguf):
    """cpu-small with the real llama-server taken from PATH and the real Gemma from a local file:
    an apply that takes seconds, for tests about what happens around the runtimes."""
    def make(supervisor_port=None) -> Path:
        doc = {"deployment": {"runtimes": {"llama-server": {"install": {"method": "path"}}}},
               "models": {"gemma3-270m": {"sources": [f"file://{gemma_gguf}"]}}}
        if supervisor_port is not None:
            doc["supervisor"] = {"port": supervisor_port}
        path = tmp_path / f"o-{supervisor_port}.yaml"
        path.write_text(json.dumps(doc))
        return path

    path_env = f"{llama_server_binary.parent}{os.pathsep}{os.environ['PATH']}"
    return make, {"PATH": path_env}


@pytest.mark.e2e
def test_a_second_farmhand_home_beside_the_first(farmhand, tmp_path, quick_cpu_overrides):
    """Two homes on one host: with default ports both run (the second takes the next free ports);
    asking the second for the first's supervisor port stops in preflight, naming the holder."""
    from conftest import Farmhand

    make, env = quick_cpu_overrides
    other_project = tmp_path / "project-b"
    other_project.mkdir()
    second = Farmhand(tmp_path / "home-b", other_project)
    try:
        a = farmhand.json("apply", "--yes", "--profile", "cpu-small", "--overrides", str(make()), env=env)
        b = second.json("apply", "--yes", "--profile", "cpu-small", "--overrides", str(make()), env=env)
        assert a["runtimes"][0]["port"] != b["runtimes"][0]["port"]
        sup_a = json.loads((farmhand.home / "state/supervisor.json").read_text())
        sup_b = json.loads((second.home / "state/supervisor.json").read_text())
        assert sup_a["port"] != sup_b["port"]
        assert farmhand.json("status")["status"] == second.json("status")["status"] == "ok"

        third = Farmhand(tmp_path / "home-c", other_project)
        proc = third.run("apply", "--yes", "--profile", "cpu-small", "--overrides",
                         str(make(supervisor_port=sup_a["port"])), env=env)
        assert proc.returncode == EXIT_CONFLICT, proc.stderr
        err = one_line_error(proc)
        assert f"port {sup_a['port']} for the supervisor's /health (asked for by supervisor.port)" in err
        assert f"pid {sup_a['pid']}" in err
        assert not (third.home / "state" / "ledger.json").exists()
    finally:
        second.run("destroy", "--yes", "--purge-models")
    assert not home_processes(second.home)


def test_the_launcher_goes_where_path_looks_and_destroy_removes_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("FARMHAND_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    paths = resolve()
    step = LauncherStep(paths, python="/opt/venv/bin/python")
    ledger = Ledger(paths)
    ctx = Context(paths, ledger, None, tmp_path)
    assert step.file == tmp_path / ".local/bin/farmhand"
    monkeypatch.setenv("PATH", "/usr/bin")
    assert not step.check(ctx).up_to_date
    step.apply(ctx)
    ledger.save()
    assert step.file.read_text() == ("#!/bin/sh\n# farmhand launcher: written by `farmhand apply`, removed by "
                                     "`farmhand destroy`.\nexec /opt/venv/bin/python -m supervisor \"$@\"\n")
    assert os.access(step.file, os.X_OK) and step.check(ctx).up_to_date
    assert step.command() == str(step.file)
    assert step.path_note() == (f"{tmp_path}/.local/bin is not on PATH: add it (export PATH=\"{tmp_path}/.local/bin"
                                ":$PATH\") to type `farmhand`")
    monkeypatch.setenv("PATH", f"{tmp_path}/.local/bin:/usr/bin")
    assert step.command() == "farmhand" and step.path_note() is None
    destroy_mod.destroy(paths)
    assert not step.file.exists() and not (tmp_path / ".local/bin").exists()


def test_a_farmhand_named_file_that_is_not_ours_is_left_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("FARMHAND_HOME", raising=False)
    paths = resolve()
    theirs = tmp_path / ".local/bin/farmhand"
    theirs.parent.mkdir(parents=True)
    theirs.write_text("#!/bin/sh\necho mine\n")
    step = LauncherStep(paths, python="/opt/venv/bin/python")
    status = step.check(Context(paths, Ledger(paths), None, tmp_path))
    assert status.up_to_date and "not farmhand's launcher; left alone" in status.detail
    assert step.command() == "/opt/venv/bin/python -m supervisor"
    assert theirs.read_text() == "#!/bin/sh\necho mine\n"


def test_system_mode_launcher_location():
    paths = resolve(system=True)
    step = LauncherStep(paths, python="/opt/venv/bin/python")
    assert step.file == Path("/usr/local/bin/farmhand") and "--system" in step.text


def test_four_runtimes_that_ignore_sigterm_stop_in_about_one_grace_period(farmhand):
    """Parallel stop: four runtimes that each take their whole grace to die stop in about one
    grace period, not four."""
    grace = 0.6
    specs = [fake_spec(f"svc{i}", free_port(), "--ignore-term", grace_s=grace) for i in range(4)]
    farmhand.write_specs(specs)
    farmhand.run("up", check=True)
    result = farmhand.json("down")
    assert grace <= result["seconds"] < grace * 2.5, result
    wait_for(lambda: not home_processes(farmhand.home), what="every runtime to be gone")
