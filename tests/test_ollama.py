"""Ollama, installed and run for real (issue 10). Ollama's archives cannot be downloaded here, so
a fake `ollama` that speaks the documented API (tests/fakes/fake_ollama.py, with the real
llama-server as its runner) is packaged the way upstream packages it, with sha256sum.txt, and
served on loopback as an https mirror of GitHub's release directory, next to an Ollama
registry holding a second model. farmhand's real install path, extraction, start, readiness,
pull stream, blob upload, create, tags, stop and teardown run exactly as in production."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import requests
import yaml
from checks import TEMPLATE_TOKENS, files_under, listening_ports
from conftest import FIXTURES, free_port, home_processes, wait_for
from fakes.file_server import FileServer
from fakes.ollama_release import FAKE, registry, release, tiny_gguf
from planning import build, host, nvidia, oracle

from supervisor.backends import get_backend
from supervisor.backends import ollama as ollama_backend
from supervisor.backends.base import RunningServer
from supervisor.backends.ollama_api import OllamaAPI, OllamaError, parse_name, short_name
from supervisor.deployment import RuntimeDecl
from supervisor.installers.archive import archives_of, parse_sha256sums
from supervisor.progress import Reporter

NVIDIA_HOST = FIXTURES / "hosts" / "workstation-4090-3090"  # 24 GiB cards: profile nvidia-mid
VERSION = ollama_backend.VERSION
QUIET = Reporter(quiet=True)


# --- the pure parts, table-driven -------------------------------------------------------------------
ARCHIVES = {
    "linux x86_64 cuda": (host(gpus=[nvidia("RTX 4090", 24)]), "cuda", {}, ["ollama-linux-amd64.tar.zst"]),
    "linux arm64 cpu": (host(arch="arm64"), "cpu", {}, ["ollama-linux-arm64.tar.zst"]),
    "AMD ROCm: the -rocm add-on": (host(), "rocm", {}, ["ollama-linux-amd64.tar.zst",
                                                        "ollama-linux-amd64-rocm.tar.zst"]),
    "Jetson, JetPack 6": (host(arch="arm64", jetpack=6), "cuda", {}, ["ollama-linux-arm64.tar.zst",
                                                                     "ollama-linux-arm64-jetpack6.tar.zst"]),
    "a release before zstd": (host(), "cuda", {"version": "0.13.5"}, ["ollama-linux-amd64.tgz"]),
    "macOS": (host(system="Darwin", arch="arm64"), "metal", {}, ["ollama-darwin.tgz"]),
}


@pytest.mark.parametrize("case", ARCHIVES)
def test_the_release_archives_for_a_host(case):
    facts, variant, declared, names = ARCHIVES[case]
    decl = RuntimeDecl("ollama", "ollama", variant, {"method": "archive", **declared})
    spec = get_backend("ollama").install_spec(decl, facts)
    version = declared.get("version", VERSION)
    base = f"https://github.com/ollama/ollama/releases/download/v{version}"
    assert [a.url for a in archives_of(spec)] == [f"{base}/{n}" for n in names]
    assert all(a.sha256 is None for a in archives_of(spec)) and spec.get("sha256sums") == f"{base}/sha256sum.txt"
    assert spec.get("binary") == ("ollama" if facts["os"]["system"] == "Darwin" else "bin/ollama")


def test_an_unknown_architecture_and_a_mirror():
    decl = RuntimeDecl("ollama", "ollama", "cpu", {"method": "archive"})
    spec = get_backend("ollama").install_spec(decl, host(arch="riscv64"))
    from supervisor import installers

    assert "no Linux build for 'riscv64'" in installers.problem_of(spec, None)
    mirrored = RuntimeDecl("ollama", "ollama", "cpu", {"method": "archive", "base_url": "https://mirror.example/o"})
    spec = get_backend("ollama").install_spec(mirrored, host())
    assert archives_of(spec)[0].url == "https://mirror.example/o/ollama-linux-amd64.tar.zst"


def test_sha256sum_files_as_upstream_writes_them():
    a, b = "a" * 64, "B" * 64
    assert parse_sha256sums(f"{a}  ./ollama-linux-amd64.tar.zst\n{b} *dist/ollama-darwin.tgz\nnot a line\n") == {
        "ollama-linux-amd64.tar.zst": a, "ollama-darwin.tgz": "b" * 64}


NAMES = {
    "gemma3:270m": (("registry.ollama.ai", "library", "gemma3", "270m"), "gemma3:270m"),
    "llama3.2": (("registry.ollama.ai", "library", "llama3.2", "latest"), "llama3.2:latest"),
    "farmhand/gemma3-270m:latest": (("registry.ollama.ai", "farmhand", "gemma3-270m", "latest"),
                                    "farmhand/gemma3-270m:latest"),
    "127.0.0.1:5000/library/tiny:v1": (("127.0.0.1:5000", "library", "tiny", "v1"), "127.0.0.1:5000/library/tiny:v1"),
    "hf.co/org/repo:Q4_K_M": (("hf.co", "org", "repo", "Q4_K_M"), "hf.co/org/repo:Q4_K_M"),
}


@pytest.mark.parametrize("name", NAMES)
def test_model_names_as_ollama_reads_them(name):
    parts, short = NAMES[name]
    assert parse_name(name) == parts and short_name(name) == short


def test_plan_pulls_by_name_imports_files_and_adopts_a_running_server(tmp_path):
    facts = host(64, gpus=[nvidia("RTX 4090", 24)])
    overrides = {"deployment": {"roles": {"default": {"use": [{"model": "gemma3-270m", "runtime": "ollama"}]},
                                          "fast": {"use": [{"model": "llama3.2-3b", "runtime": "ollama"}]}}}}

    def offline_except_registry(model, backend, server=None):
        usable = backend.usable_sources(model)
        pick = next((u for u in usable if u.startswith(("ollama://llama3.2", "pip://"))), None)
        return (True, "reachable", pick) if pick else (False, "offline", "")

    plan = build(tmp_path / "own", facts, overrides=overrides, oracle_=oracle(available=offline_except_registry))
    rt = plan.selection.runtimes["ollama"]
    assert (rt.managed, rt.install.method, rt.port) == (True, "archive", 11434)
    ids = {m.model.name: rt.backend.model_id(m) for m in rt.models}
    assert ids == {"gemma3-270m": "farmhand/gemma3-270m:latest", "llama3.2-3b": "llama3.2:3b"}
    steps = [s.id for s in plan.steps]
    assert steps.index("runtime:up") < steps.index("import:ollama/gemma3-270m") < steps.index(
        "load:ollama/farmhand/gemma3-270m:latest")
    assert "pull:ollama/llama3.2-3b" in steps and "store:ollama" in steps

    running = RunningServer("http://127.0.0.1:11434", 11434, "0.30.1")
    adopted = build(tmp_path / "adopted", facts, overrides=overrides,
                    oracle_=oracle(available=offline_except_registry, running={"ollama": running}))
    rt = adopted.selection.runtimes["ollama"]
    assert (rt.managed, rt.install.method, rt.port) == (False, "external", 11434)
    data = adopted.to_json()
    assert data["runtimes"][0]["argv"] == [] and adopted.renderer.render().runtimes == ()
    assert "using the ollama already running at 127.0.0.1:11434 (version 0.30.1)" in data["runtimes"][0]["notes"][0]
    ids = [s.id for s in adopted.steps]
    assert "store:ollama" not in ids and not any(i.startswith("load:") for i in ids)  # its own keep-alive rules

    from supervisor.errors import EnvironmentProblem

    gone = EnvironmentProblem("the ollama at http://127.0.0.1:11434 went away")
    with pytest.raises(EnvironmentProblem, match="went away"):  # no fallback to another profile
        build(tmp_path / "gone", facts, overrides=overrides, oracle_=oracle(available=offline_except_registry,
                                                                            running={"ollama": gone}))


# --- the release, the registry, the mirror ------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf")


@pytest.fixture
def mirror(tmp_path, tiny):
    """A loopback server standing in for GitHub's release downloads and Ollama's registry."""
    root = tmp_path / "www"
    root.mkdir()
    registry(root, "library/tiny-test:latest", tiny)
    with FileServer(root) as server:
        yield root, server


def overrides(tmp_path: Path, server: FileServer, tiny: Path, gemma: Path | None, **runtime) -> Path:
    """nvidia-mid as shipped, with the loopback mirrors, a supervisor port of its own, and a
    second role served by a model pulled by name (from the registry) on the same Ollama."""
    base = f"http://127.0.0.1:{server.port}"
    data = {"mirrors": {"https": base, "ollama": base}, "supervisor": {"port": 0, "grace_s": 10},
            "deployment": {"runtimes": {"ollama": {"install": {"method": "archive"}} | runtime},
                           "roles": {"draft": {"use": [{"model": "tiny-test", "runtime": "ollama"}]}}},
            "models": {"tiny-test": {"size_bytes": tiny.stat().st_size, "memory_gib": 0.1,
                                     "sources": ["ollama://tiny-test:latest"]}}}
    if gemma is not None:  # the pip Gemma this checkout already fetched, offered as a local file
        data["models"]["gemma3-270m"] = {"sources": ["ollama://gemma3:270m", f"file://{gemma}"]}
    else:
        data["deployment"]["roles"] = {"default": {"use": [{"model": "tiny-test", "runtime": "ollama"}]}}
    path = tmp_path / "overrides.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def runner_tree(pid: int) -> list[psutil.Process]:
    try:
        return [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            pass
    return out


# --- end to end ----------------------------------------------------------------------------------
@pytest.mark.e2e
def test_nvidia_host_gets_ollama_from_the_mirror_and_serves(farmhand, llama_server_binary, gemma_gguf, mirror,
                                                            tiny, tmp_path):
    root, server = mirror
    release(root, VERSION, llama_server_binary)
    o = overrides(tmp_path, server, tiny, gemma_gguf)
    ports_before, tmp_before = listening_ports(), set(os.listdir("/tmp"))
    ollama_free = 11434 not in ports_before

    plan = farmhand.json("plan", "--replay", str(NVIDIA_HOST), "--overrides", str(o))
    assert plan["profile"]["name"] == "nvidia-mid"
    roles = {r["role"]: r for r in plan["roles"]}
    assert roles["default"]["model_id"] == "farmhand/gemma3-270m:latest"  # offline: imported, not pulled
    assert roles["draft"]["model_id"] == "tiny-test:latest"
    assert any("gemma3-instruct" in n for n in plan["runtimes"][0]["notes"]), plan["runtimes"][0]["notes"]

    summary = farmhand.json("apply", "--yes", "--replay", str(NVIDIA_HOST), "--overrides", str(o), timeout=900)
    (rt,) = summary["runtimes"]
    assert (rt["backend"], rt["version"], rt["managed"]) == ("ollama", VERSION, True)
    assert rt["port"] == 11434 or not ollama_free
    url = rt["url"]
    got = [p for m, p, _ in server.requests if m == "GET"]
    release_dir = f"/github.com/ollama/ollama/releases/download/v{VERSION}"
    assert got.index(f"{release_dir}/sha256sum.txt") < got.index(f"{release_dir}/ollama-linux-amd64.tar.zst")
    assert not any("rocm" in p for p in got)  # a CUDA host needs no ROCm add-on

    # The install keeps upstream's layout in a versioned directory of farmhand's; no download left.
    install = farmhand.home / "data" / "backends" / "ollama"
    (prefix,) = [p for p in install.iterdir()]
    assert (prefix / "bin" / "ollama").is_file() and (prefix / "lib" / "ollama" / "llama-server").is_file()
    assert not list((farmhand.home / "cache").rglob("*.tar.zst"))
    store_dir = farmhand.home / "data" / "models" / "ollama"
    assert store_dir.stat().st_mode & 0o077 == 0

    # The server runs with the plan's settings, its store inside farmhand's.
    status = farmhand.json("status")
    pid = status["runtimes"][0]["pid"]
    env = psutil.Process(pid).environ()
    assert env["OLLAMA_HOST"] == f"127.0.0.1:{rt['port']}" and env["OLLAMA_MODELS"] == str(store_dir)
    assert (env["OLLAMA_KEEP_ALIVE"], env["OLLAMA_MAX_LOADED_MODELS"], env["OLLAMA_NUM_PARALLEL"]) == ("-1", "2", "1")
    assert "OLLAMA_ORIGINS" not in env or "evil" not in env["OLLAMA_ORIGINS"]

    # Both models are in its store; Gemma was imported with Gemma's turn template (the file has none).
    api = OllamaAPI(url)
    assert {"farmhand/gemma3-270m:latest", "tiny-test:latest"} <= set(api.tags())
    show = requests.post(f"{url}/api/show", json={"model": "farmhand/gemma3-270m:latest"}, timeout=10).json()
    assert show["template"].startswith("{{- range $i, $_ := .Messages }}") and "<start_of_turn>" in show["template"]
    assert "farmhand/gemma3-270m:latest" in api.loaded()  # warmed: the first request does not wait

    # What a user checks: an answer in words, no template tokens; the weights compute.
    reply = requests.post(f"{url}/v1/chat/completions", timeout=120, json={
        "model": "farmhand/gemma3-270m:latest", "max_tokens": 16, "temperature": 0,
        "messages": [{"role": "user", "content": "Name one colour."}]}).json()
    content = reply["choices"][0]["message"]["content"]
    assert not any(t in content for t in TEMPLATE_TOKENS) and re.search(r"[A-Za-z]{3,}", content), content
    done = requests.post(f"{url}/api/generate", timeout=120, json={
        "model": "farmhand/gemma3-270m:latest", "prompt": "Monday, Tuesday, Wednesday,", "raw": True,
        "stream": False, "options": {"num_predict": 8}}).json()
    assert "Thursday" in done["response"], done

    doc = yaml.safe_load((farmhand.project / "llamafarm.yaml").read_text())
    assert [(m["name"], m["provider"], m["model"], m["base_url"]) for m in doc["runtime"]["models"]] == [
        ("default", "ollama", "farmhand/gemma3-270m:latest", url), ("draft", "ollama", "tiny-test:latest", url)]

    again = farmhand.json("apply", "--yes", "--replay", str(NVIDIA_HOST), "--overrides", str(o))
    assert again["changed"] is False, [s for s in again["steps"] if s["changed"]]

    # down stops the whole group: the server and the runner it forked.
    group = runner_tree(pid)
    assert any("llama-server" in " ".join(p.cmdline()) for p in group), [p.cmdline() for p in group]
    farmhand.json("down")
    wait_for(lambda: not alive(group), timeout=15, what="ollama and its runner to exit")

    farmhand.json("destroy", "--yes", "--purge-models")
    assert files_under(farmhand.home) == set(), files_under(farmhand.home)
    assert not home_processes(farmhand.home)
    assert listening_ports() - ports_before <= {server.port}
    assert set(os.listdir("/tmp")) - tmp_before <= {p for p in os.listdir("/tmp") if p.startswith("pytest")}


@pytest.mark.e2e
def test_the_real_ollama_on_path_when_there_is_one(farmhand, gemma_gguf, tmp_path):
    """The same path against upstream's binary: used from PATH, the Gemma imported offline."""
    if not shutil.which("ollama"):
        pytest.skip("no `ollama` on PATH here (only the fake can run): install Ollama to run this test")
    data = {"supervisor": {"port": 0}, "deployment": {"runtimes": {"ollama": {"install": {"method": "path"}}}},
            "models": {"gemma3-270m": {"sources": [f"file://{gemma_gguf}"]}}}
    (tmp_path / "o.yaml").write_text(yaml.safe_dump(data))
    summary = farmhand.json("apply", "--yes", "--replay", str(NVIDIA_HOST), "--overrides", str(tmp_path / "o.yaml"),
                            timeout=900)
    url = summary["runtimes"][0]["url"]
    reply = requests.post(f"{url}/v1/chat/completions", timeout=300, json={
        "model": "farmhand/gemma3-270m:latest", "max_tokens": 16, "temperature": 0,
        "messages": [{"role": "user", "content": "Name one colour."}]}).json()
    content = reply["choices"][0]["message"]["content"]
    assert not any(t in content for t in TEMPLATE_TOKENS) and re.search(r"[A-Za-z]{3,}", content), content
    farmhand.json("destroy", "--yes", "--purge-models")
    assert not home_processes(farmhand.home)


BAD_RELEASES = {
    "wrong digest": ({"wrong_digest": True}, "sha256 mismatch: expected {listed}, got {actual}"),
    "truncated": ({"truncate": True}, "ollama-linux-amd64.tar.zst: truncated or corrupt archive"),
    "a ../ member": ({"evil": "dotdot"}, "member 'lib/../../escaped.txt' points outside the archive (..)"),
    "an absolute path": ({"evil": "absolute"}, "member '/tmp/farmhand-escaped.txt' has an absolute path"),
    "a symlink pointing out": ({"evil": "symlink"}, "link 'lib/ollama/escape' -> '../../../../etc' points outside"),
    "a hard link out": ({"evil": "hardlink"}, "member '/etc/passwd' has an absolute path"),
}


@pytest.mark.parametrize("case", BAD_RELEASES)
def test_a_bad_ollama_release_is_refused_and_leaves_nothing(case, farmhand, mirror, tiny, tmp_path):
    knobs, message = BAD_RELEASES[case]
    root, server = mirror
    directory = release(root, VERSION, None, addons=(), **knobs)
    archive = directory / "ollama-linux-amd64.tar.zst"
    listed = parse_sha256sums((directory / "sha256sum.txt").read_text())[archive.name]
    import hashlib

    message = message.format(listed=listed, actual=hashlib.sha256(archive.read_bytes()).hexdigest())
    o = overrides(tmp_path, server, tiny, None)
    proc = farmhand.run("apply", "--yes", "--replay", str(NVIDIA_HOST), "--overrides", str(o))
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]  # the rest is progress
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert len(errors) == 1 and errors[0] == proc.stderr.strip().splitlines()[-1], proc.stderr
    assert errors[0].startswith("farmhand: error: ") and message in errors[0], errors[0]
    backends = farmhand.home / "data" / "backends"
    assert not backends.exists() or not any(backends.rglob("*")), list(backends.rglob("*"))
    assert not any((farmhand.home / "cache").rglob("*.tar.zst")) and not any(farmhand.home.rglob("*.partial"))
    assert not Path("/tmp/farmhand-escaped.txt").exists() and not (farmhand.home / "data" / "escaped.txt").exists()
    assert not home_processes(farmhand.home)


# --- an Ollama farmhand did not start -------------------------------------------------------------
def unpack_release(directory: Path, target: Path) -> Path:
    from supervisor import extract

    extract.extract(directory / "ollama-linux-amd64.tar.zst", target)
    return target / "bin" / "ollama"


@pytest.mark.e2e
def test_an_ollama_already_running_is_adopted_not_replaced(farmhand, llama_server_binary, gemma_gguf, mirror, tiny,
                                                           tmp_path):
    from supervisor.ports import is_free

    if not is_free(11434):
        pytest.skip("port 11434 is taken on this machine: the system Ollama this test plays cannot start")
    root, server = mirror
    binary = unpack_release(release(root, "0.30.1", llama_server_binary, addons=()), tmp_path / "system-ollama")
    system_store = tmp_path / "system-store"
    env = os.environ | {"OLLAMA_HOST": "127.0.0.1:11434", "OLLAMA_MODELS": str(system_store)}
    system = subprocess.Popen([str(binary), "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        wait_for(lambda: OllamaAPI("http://127.0.0.1:11434").version(), timeout=15, what="the system Ollama")
        # This CPU host's own profile, told to serve its roles from Ollama (install method `auto`,
        # as profiles ship it): the Ollama already running here is the one it gets.
        base = f"http://127.0.0.1:{server.port}"
        data = {"mirrors": {"https": base, "ollama": base}, "supervisor": {"port": 0},
                "deployment": {"runtimes": {"ollama": {"backend": "ollama", "variant": "cpu"}},
                               "roles": {"default": {"use": [{"model": "gemma3-270m", "runtime": "ollama"}]},
                                         "draft": {"use": [{"model": "tiny-test", "runtime": "ollama"}]}}},
                "models": {"gemma3-270m": {"sources": [f"file://{gemma_gguf}"]},
                           "tiny-test": {"size_bytes": tiny.stat().st_size, "memory_gib": 0.1,
                                         "sources": ["ollama://tiny-test:latest"]}}}
        (tmp_path / "auto.yaml").write_text(yaml.safe_dump(data))
        args = ("--overrides", str(tmp_path / "auto.yaml"))

        plan = farmhand.run("plan", *args, check=True)
        assert "using the ollama already running at 127.0.0.1:11434 (version 0.30.1)" in plan.stdout, plan.stdout
        summary = farmhand.json("apply", "--yes", *args, timeout=600)
        (rt,) = summary["runtimes"]
        assert (rt["managed"], rt["version"], rt["url"]) == (False, "0.30.1", "http://127.0.0.1:11434")
        assert not (farmhand.home / "data" / "backends").exists()  # nothing installed
        status = farmhand.json("status")
        assert status["runtimes"] == []  # nothing of it supervised, but its roles are watched
        assert [r["state"] for r in status["roles"]] == ["ready (not farmhand's; ollama 0.30.1)"] * 2
        api = OllamaAPI("http://127.0.0.1:11434")
        assert {"farmhand/gemma3-270m:latest", "tiny-test:latest"} <= set(api.tags())
        assert list(system_store.glob("blobs/sha256-*")), "the models went into the system Ollama's own store"
        reply = requests.post("http://127.0.0.1:11434/v1/chat/completions", timeout=120, json={
            "model": "farmhand/gemma3-270m:latest", "max_tokens": 12, "temperature": 0,
            "messages": [{"role": "user", "content": "Name one colour."}]}).json()
        assert re.search(r"[A-Za-z]{3,}", reply["choices"][0]["message"]["content"]), reply
        assert farmhand.json("apply", "--yes", *args)["changed"] is False

        result = farmhand.json("destroy", "--yes", "--purge-models")
        assert any("http://127.0.0.1:11434" in k and "farmhand/gemma3-270m:latest" in k for k in result["kept"])
        assert system.poll() is None and OllamaAPI("http://127.0.0.1:11434").version() == "0.30.1"
        assert "tiny-test:latest" in api.tags()  # its store untouched

        # Adopted once, relied on: when it is gone, apply says so instead of installing a second one.
        farmhand.json("apply", "--yes", *args, timeout=600)
        system.terminate()
        system.wait(15)
        status = farmhand.run("status")
        assert status.returncode == 1 and "NOT ANSWERING (not farmhand's)" in status.stdout, status.stdout
        proc = farmhand.run("apply", "--yes", *args)
        assert proc.returncode == 6, proc.stderr
        assert "does not answer: start it again (systemctl start ollama)" in proc.stderr and "--reselect" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert not (farmhand.home / "data" / "backends").exists()
    finally:
        if system.poll() is None:
            system.terminate()
            system.wait(15)
        for p in alive([p for p in psutil.process_iter() if str(tmp_path / "system-ollama") in " ".join(
                _cmdline(p))]):
            p.kill()


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []


@pytest.mark.e2e
def test_an_upgrade_installs_beside_and_drops_the_old_one_only_once_ready(farmhand, llama_server_binary, gemma_gguf,
                                                                          mirror, tiny, tmp_path):
    root, server = mirror
    release(root, "0.32.14", llama_server_binary, addons=())
    release(root, VERSION, llama_server_binary, addons=())
    broken = release(root, "0.32.99", None, addons=())
    script = "#!/bin/sh\necho 'Error: listen tcp: bind: permission denied' >&2\nexit 1\n"
    _replace_member(broken / "ollama-linux-amd64.tar.zst", "bin/ollama", script.encode())

    def apply_version(version: str, check: bool = True):
        o = overrides(tmp_path, server, tiny, gemma_gguf, install={"method": "archive", "version": version})
        args = ("apply", "--yes", "--replay", str(NVIDIA_HOST), "--overrides", str(o))
        return farmhand.json(*args, timeout=600) if check else farmhand.run(*args, timeout=600)

    def installs() -> dict[str, Path]:
        """{version the binary reports: install directory}."""
        out = {}
        for prefix in (farmhand.home / "data" / "backends" / "ollama").iterdir():
            said = subprocess.run([prefix / "bin" / "ollama", "--version"], capture_output=True, text=True,
                                  env={"OLLAMA_HOST": "127.0.0.1:1"})
            out[said.stdout.split()[-1] if said.returncode == 0 else "broken"] = prefix
        return out

    def serving() -> str:
        (rt,) = farmhand.json("status")["runtimes"]
        assert rt["state"] == "ready", rt
        return " ".join(psutil.Process(rt["pid"]).cmdline())

    assert apply_version("0.32.14")["runtimes"][0]["version"] == "0.32.14"
    old = installs()["0.32.14"]
    up = apply_version(VERSION)
    assert up["runtimes"][0]["version"] == VERSION
    pruned = next(s for s in up["steps"] if s["id"] == "prune:installs")
    assert pruned["changed"] and str(old) in pruned["detail"]
    assert set(installs()) == {VERSION} and not old.exists()
    current = installs()[VERSION]
    assert str(current) in serving()

    # A new version that does not come up: the one that ran runs again, its directory stays.
    proc = apply_version("0.32.99", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "rolled back: the new runtimes did not come up" in proc.stderr and "bind: permission denied" in proc.stderr
    assert set(installs()) == {VERSION, "broken"} and str(current) in serving()
    assert apply_version(VERSION)["changed"] is True  # the spec goes back; the broken install is pruned
    assert installs() == {VERSION: current}


def _replace_member(archive: Path, name: str, data: bytes) -> None:
    import hashlib
    import io
    import tarfile

    import zstandard

    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(archive.read_bytes())).read()
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(raw)) as src, tarfile.open(fileobj=out, mode="w") as dst:
        for m in src.getmembers():
            if m.name == name:
                m.size = len(data)
                dst.addfile(m, io.BytesIO(data))
            else:
                dst.addfile(m, src.extractfile(m) if m.isfile() else None)
    archive.write_bytes(zstandard.ZstdCompressor().compress(out.getvalue()))
    sums = archive.parent / "sha256sum.txt"
    lines = [f"{hashlib.sha256(archive.read_bytes()).hexdigest()}  ./{archive.name}" if line.endswith(archive.name)
             else line for line in sums.read_text().splitlines()]
    sums.write_text("\n".join(lines) + "\n")


# --- the API client against the fake (no runner needed) -------------------------------------------
@pytest.fixture
def fake_server(tmp_path):
    port = free_port()
    env = os.environ | {"OLLAMA_HOST": f"127.0.0.1:{port}", "OLLAMA_MODELS": str(tmp_path / "store")}
    proc = subprocess.Popen([sys.executable, str(FAKE), "serve"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: OllamaAPI(url).version(), timeout=15, what="the fake ollama")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_pull_error_line_names_the_model(fake_server, mirror):
    _, server = mirror
    api = OllamaAPI(fake_server)
    with pytest.raises(OllamaError) as raised:
        api.pull(f"127.0.0.1:{server.port}/library/no-such-model:latest", insecure=True, report=QUIET, label="x")
    assert str(raised.value) == (f"pulling 127.0.0.1:{server.port}/library/no-such-model:latest failed: pull model "
                                 f"manifest: file does not exist (ollama at {fake_server})")
    with pytest.raises(OllamaError, match="insecure|https"):  # a plain-http registry needs `insecure`
        api.pull(f"127.0.0.1:{server.port}/library/tiny-test:latest", insecure=False, report=QUIET, label="x")


def test_an_upload_with_the_wrong_digest_is_refused_by_the_server(fake_server, tiny):
    api = OllamaAPI(fake_server)
    with pytest.raises(OllamaError) as raised:
        api.push_blob(tiny, "0" * 64, report=QUIET, label="x")
    assert "digest mismatch" in str(raised.value) and "HTTP 400" in str(raised.value)
    import hashlib

    digest = hashlib.sha256(tiny.read_bytes()).hexdigest()
    assert not api.has_blob(digest)
    api.push_blob(tiny, digest, report=QUIET, label="x")
    assert api.has_blob(digest)
    api.create("farmhand/tiny:latest", {"tiny.gguf": f"sha256:{digest}"}, None, None)
    assert "farmhand/tiny:latest" in api.tags()
    with pytest.raises(OllamaError, match="creating farmhand/not-there:latest failed"):
        api.create("farmhand/not-there:latest", {"x.gguf": "sha256:" + "1" * 64}, None, None)


def test_the_fake_keeps_ollamas_cors_rules(fake_server):
    foreign = requests.get(f"{fake_server}/api/version", headers={"Origin": "http://evil.example"}, timeout=5)
    local = requests.get(f"{fake_server}/api/version", headers={"Origin": "http://127.0.0.1:8000"}, timeout=5)
    assert (foreign.status_code, local.status_code) == (403, 200)


def test_fake_is_stdlib_only():
    """The fake runs as bin/ollama under any Python: nothing but the standard library."""
    imports = set(re.findall(r"^(?:from|import) ([a-z_]+)", FAKE.read_text(), re.M))
    assert imports <= set(sys.stdlib_module_names) | {"__future__"}, imports - set(sys.stdlib_module_names)


@pytest.mark.e2e
def test_an_ollama_bundle_installs_with_nothing_fetched(farmhand, llama_server_binary, gemma_gguf, mirror, tmp_path):
    """bundle create carries Ollama's release archive (digest from its sha256sum.txt) and the GGUF;
    apply --bundle installs and imports from it: the mirror sees no request, and the chat works."""
    root, server = mirror
    release(root, VERSION, llama_server_binary)
    base = f"http://127.0.0.1:{server.port}"
    o = tmp_path / "bundle-overrides.yaml"
    o.write_text(yaml.safe_dump({
        "mirrors": {"https": base, "ollama": base}, "supervisor": {"port": 0},
        "deployment": {"runtimes": {"ollama": {"install": {"method": "archive"}}}},
        "models": {"gemma3-270m": {"sources": [f"file://{gemma_gguf}"]}}}))
    out = tmp_path / "ollama-bundle.tar"
    made = farmhand.json("bundle", "create", str(out), "--replay", str(NVIDIA_HOST), "--overrides", str(o), timeout=600)
    assert made["built_for"]["variants"] == ["cuda"] and made["built_for"]["cpu_level"] == "none"
    assert [k.split("-")[0] for k in made["installs"]] == ["ollama"] and made["models"] == ["gemma3-270m"]
    farmhand.json("destroy", "--yes", "--purge-models")  # the builder's home is not the target's

    asked = len(server.requests)
    summary = farmhand.json("apply", "--yes", "--bundle", str(out), "--replay", str(NVIDIA_HOST), timeout=600)
    assert server.requests[asked:] == [], "installing from the bundle fetched something"
    (rt,) = summary["runtimes"]
    assert (rt["backend"], rt["version"]) == ("ollama", VERSION)
    done = requests.post(f"{rt['url']}/api/generate", timeout=120, json={
        "model": "farmhand/gemma3-270m:latest", "prompt": "Monday, Tuesday, Wednesday,", "raw": True,
        "stream": False, "options": {"num_predict": 8}}).json()
    assert "Thursday" in done["response"], done
    again = farmhand.json("apply", "--yes", "--bundle", str(out), "--replay", str(NVIDIA_HOST))
    assert again["changed"] is False, [s for s in again["steps"] if s["changed"]]
    assert server.requests[asked:] == []
    farmhand.json("destroy", "--yes", "--purge-models")
    assert files_under(farmhand.home) == set(), files_under(farmhand.home)


@pytest.mark.e2e
def test_a_registry_model_cannot_go_in_a_bundle(farmhand, llama_server_binary, gemma_gguf, mirror, tiny, tmp_path):
    root, server = mirror
    release(root, VERSION, llama_server_binary)
    o = overrides(tmp_path, server, tiny, gemma_gguf)  # its draft role pulls tiny-test by name
    proc = farmhand.run("bundle", "create", str(tmp_path / "b.tar"), "--replay", str(NVIDIA_HOST), "--overrides",
                        str(o))
    assert proc.returncode == 5 and "pulled by name" in proc.stderr and "tiny-test" in proc.stderr, proc.stderr
    assert not (tmp_path / "b.tar").exists()
