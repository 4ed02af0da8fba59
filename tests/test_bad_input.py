"""Bad input: each gets a clear one-line error, a non-zero exit code, and nothing half-written."""

from __future__ import annotations

import hashlib
import shutil

import pytest
from checks import one_line_error
from conftest import REPO, free_port

from supervisor.errors import EXIT_BAD_INPUT, EXIT_CONFLICT, EXIT_VERIFY


@pytest.fixture
def profiles_copy(tmp_path):
    target = tmp_path / "profiles"
    shutil.copytree(REPO / "profiles", target)
    return target


def test_malformed_profile_yaml_names_file_and_line(farmhand, profiles_copy):
    bad = profiles_copy / "cpu-small.yaml"
    lines = bad.read_text().splitlines()
    lines[3] = "match: {oops"  # line 4
    bad.write_text("\n".join(lines) + "\n")
    proc = farmhand.run("plan", "--profiles-dir", str(profiles_copy))
    assert proc.returncode == EXIT_BAD_INPUT
    err = one_line_error(proc)
    assert f"{bad}:" in err and "malformed YAML" in err
    line = int(err.split(f"{bad}:")[1].split(":")[0])
    assert line in (4, 5)  # the flow mapping opens on 4; PyYAML reports where it gave up


def test_unknown_backend_lists_known_ones(farmhand, profiles_copy):
    path = profiles_copy / "cpu-small.yaml"
    path.write_text(path.read_text().replace("backend: llama-server", "backend: llamaserver"))
    proc = farmhand.run("plan", "--profiles-dir", str(profiles_copy))
    assert proc.returncode == EXIT_BAD_INPUT
    err = one_line_error(proc)
    assert f"{path}: deployment.runtimes.llama-server.backend: unknown backend 'llamaserver'" in err
    assert "known backends: lemonade, llama-cpp-python, llama-server, ollama, vllm" in err


@pytest.mark.parametrize("how", ["flag", "overrides"])
def test_port_out_of_range(farmhand, tmp_path, how):
    if how == "flag":
        proc = farmhand.run("apply", "--yes", "--port", "70000")
        assert proc.returncode == EXIT_BAD_INPUT
        assert "70000" in proc.stderr and "range" in proc.stderr
    else:
        overrides = tmp_path / "o.yaml"
        overrides.write_text("deployment:\n  runtimes:\n    llama-server: {port: 70000}\n")
        proc = farmhand.run("apply", "--yes", "--overrides", str(overrides))
        assert proc.returncode == EXIT_BAD_INPUT
        err = one_line_error(proc)
        assert "deployment.runtimes.llama-server.port: 70000 is greater than the maximum of 65535" in err
    assert not (farmhand.home / "state" / "ledger.json").exists()
    assert not (farmhand.project / "llamafarm.yaml").exists()


def test_port_held_by_a_stranger_is_named_and_never_killed(farmhand, stranger):
    port, holder = stranger
    proc = farmhand.run("apply", "--yes", "--port", str(port))
    assert proc.returncode == EXIT_CONFLICT
    err = one_line_error(proc)
    assert f"port {port}" in err and f"pid {holder.pid}" in err and "http.server" in err
    assert "will not stop it" in err
    assert holder.poll() is None  # still running
    # Nothing was changed: preflight runs before any step.
    assert not (farmhand.home / "state" / "ledger.json").exists()
    assert not (farmhand.project / "llamafarm.yaml").exists()
    assert not (farmhand.home / "data").exists()


def test_model_digest_mismatch_removes_partial_and_shows_both(farmhand, tmp_path, llama_wheel):
    fake_model = tmp_path / "tiny.gguf"
    fake_model.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 1000)
    actual = hashlib.sha256(fake_model.read_bytes()).hexdigest()
    wrong = "0" * 64
    overrides = tmp_path / "o.yaml"
    overrides.write_text(
        "supervisor: {port: 0}\n"
        "deployment: {roles: {default: {use: [tiny]}}}\n"
        "models:\n  tiny:\n    file: tiny.gguf\n    size_bytes: 1008\n"
        f"    sha256: '{wrong}'\n    sources: ['file://{fake_model}']\n"
    )
    proc = farmhand.run("apply", "--yes", "--port", str(free_port()), "--overrides", str(overrides), timeout=1800)
    assert proc.returncode == EXIT_VERIFY, proc.stderr
    err = proc.stderr.strip().splitlines()[-1]
    assert f"expected {wrong}" in err and f"got {actual}" in err and "removed" in err
    models = farmhand.home / "data" / "models"
    assert not (models / "tiny.gguf").exists()
    assert not (models / "tiny.gguf.partial").exists()
    assert not (farmhand.project / "llamafarm.yaml").exists()


def test_malformed_llamafarm_yaml_is_named_and_left_alone(farmhand):
    broken = "version: v1\nname: x\nruntime:\n  models: [\n"
    (farmhand.project / "llamafarm.yaml").write_text(broken)
    proc = farmhand.run("plan")
    assert proc.returncode == EXIT_BAD_INPUT
    err = one_line_error(proc)
    assert "llamafarm.yaml:" in err and "malformed YAML" in err
    assert (farmhand.project / "llamafarm.yaml").read_text() == broken


def test_unknown_profile_lists_known_ones(farmhand):
    proc = farmhand.run("plan", "--profile", "gpu-9000")
    assert proc.returncode == EXIT_BAD_INPUT
    assert "known profiles:" in one_line_error(proc) and "cpu-small" in proc.stderr
