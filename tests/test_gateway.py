"""End to end, real: LiteLLM's proxy (installed through farmhand's pip path, pinned by digest) as
the gateway in front of the real llama-server and a loopback "cloud" (tests/fakes/fake_cloud.py:
OpenAI's API, only for the right Bearer key, told to fail on demand).

What a user checks: each role answers through the gateway by its name; the cloud gets the key
and nothing on disk or in any argv holds it; llamafarm.yaml holds no key at all; kill -9 of the
llama-server and the next requests are answered by the cloud within the request (none fails);
the supervisor brings llama-server back and the gateway serves from it again."""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time

import psutil
import pytest
import requests
import yaml
from checks import TEMPLATE_TOKENS, files_under, listening_ports
from conftest import REPO, free_port, home_processes, wait_for

from supervisor import llamafarm

pytestmark = pytest.mark.e2e
CLOUD_ANSWER = "The cloud model cloud-large answers:"


@pytest.fixture
def cloud():
    """The loopback cloud: (base_url, key, process)."""
    port, key = free_port(), "sk-test-" + secrets.token_hex(16)
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "fakes" / "fake_cloud.py"), "--port", str(port),
                             "--key-env", "FAKE_CLOUD_KEY"], env=os.environ | {"FAKE_CLOUD_KEY": key},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: _answers(f"{base}/v1/models"), 20, "the fake cloud to listen")
    yield f"{base}/v1", key, proc
    proc.terminate()
    proc.wait(10)


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def chat(gateway: str, role: str, text: str = "Name one colour.", timeout: float = 120) -> requests.Response:
    return requests.post(f"{gateway}/chat/completions", timeout=timeout, json={
        "model": role, "max_tokens": 12, "temperature": 0, "messages": [{"role": "user", "content": text}]})


def answer(resp: requests.Response) -> str:
    assert resp.status_code == 200, resp.text
    return resp.json()["choices"][0]["message"]["content"]


def overrides_for(cloud_url: str, gemma_gguf) -> dict:
    return {
        "supervisor": {"port": 0, "grace_s": 5},
        "deployment": {
            "gateway": "litellm",
            "roles": {
                "default": {"use": [{"model": "gemma3-270m", "runtime": "llama-server"}, {"remote": "cloud"}]},
                "cloud": {"use": [{"remote": "cloud"}], "description": "the big model, for hard questions"}},
            "remote": {"cloud": {"provider": "openai", "base_url": cloud_url, "model": "cloud-large",
                                 "api_key_env": "CLOUD_API_KEY"}}},
        "models": {"gemma3-270m": {"sources": [f"file://{gemma_gguf}"]}},
    }


def test_gateway_routes_roles_holds_the_key_and_falls_back(farmhand, llama_wheel, gemma_gguf, cloud, tmp_path):
    cloud_url, key, cloud_proc = cloud
    (tmp_path / "o.yaml").write_text(yaml.safe_dump(overrides_for(cloud_url, gemma_gguf), sort_keys=False))
    env = {"CLOUD_API_KEY": key}
    ports_before = listening_ports()
    tmp_before = set(os.listdir("/tmp"))

    summary = farmhand.json("apply", "--yes", "--overrides", str(tmp_path / "o.yaml"), timeout=1800, env=env)
    runtimes = {r["name"]: r for r in summary["runtimes"]}
    assert set(runtimes) == {"llama-server", "gateway"}
    assert runtimes["gateway"]["backend"] == "litellm" and runtimes["gateway"]["version"] == "1.110.2"
    status = farmhand.json("status", env=env)
    gw_port = next(r["port"] for r in status["runtimes"] if r["name"] == "gateway")
    gateway = f"http://127.0.0.1:{gw_port}/v1"

    # llamafarm.yaml: every role points at the gateway by its name, and holds no key.
    doc = yaml.safe_load((farmhand.project / "llamafarm.yaml").read_text())
    llamafarm.validate(doc, "llamafarm.yaml")
    assert [(m["name"], m["provider"], m["model"], m["base_url"]) for m in doc["runtime"]["models"]] == [
        ("default", "openai", "default", gateway), ("cloud", "openai", "cloud", gateway)]
    assert not any("api_key" in m for m in doc["runtime"]["models"])
    assert not [w for w in summary["warnings"] if "literally" in w or "not set" in w], summary["warnings"]

    # Each role answers through the gateway: default by the real Gemma, cloud by the cloud.
    local = answer(chat(gateway, "default"))
    assert not local.startswith(CLOUD_ANSWER) and re.search(r"[A-Za-z]{3,}", local), local
    assert not any(t in local for t in TEMPLATE_TOKENS), local
    assert answer(chat(gateway, "cloud", "What is 2+2?")).startswith(f"{CLOUD_ANSWER} What is 2+2?")
    seen = requests.get(cloud_url.removesuffix("/v1") + "/_fake/stats", timeout=5).json()
    assert seen["authorized"] == 1 and seen["unauthorized"] == 0 and seen["bearer_seen"] == [key]

    # The key is in the gateway's environment only: in no argv, no file of the home or the project.
    for proc in home_processes(farmhand.home):
        assert key not in " ".join(proc.cmdline()), proc.cmdline()
    gw_pid = next(r["pid"] for r in status["runtimes"] if r["name"] == "gateway")
    assert psutil.Process(gw_pid).environ().get("CLOUD_API_KEY") == key
    for root in (farmhand.home, farmhand.project):
        for path in root.rglob("*"):
            if path.is_file() and path.stat().st_size < 50_000_000:
                assert key.encode() not in path.read_bytes(), f"the key is in {path}"
    config = (farmhand.home / "state" / "runtime-files" / "gateway" / "litellm.yaml")
    assert "os.environ/CLOUD_API_KEY" in config.read_text() and config.stat().st_mode & 0o077 == 0

    # Closed to browsers of other origins, no admin UI.
    foreign = requests.options(f"{gateway}/chat/completions", timeout=5, headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert foreign.headers.get("access-control-allow-origin") not in ("*", "http://evil.example"), foreign.headers
    assert requests.get(f"http://127.0.0.1:{gw_port}/ui/", timeout=5).status_code != 200

    # kill -9 the llama-server: the next requests for `default` are answered by the cloud within
    # the request, none fails, and the supervisor brings llama-server back.
    ls = next(r for r in status["runtimes"] if r["name"] == "llama-server")
    os.kill(ls["pid"], signal.SIGKILL)
    killed_at = time.monotonic()
    outcomes = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        resp = chat(gateway, "default", "Say hello.", timeout=60)
        outcomes.append("failed" if resp.status_code != 200 else
                        "cloud" if answer(resp).startswith(CLOUD_ANSWER) else "local")
        if outcomes[-1] == "local" and "cloud" in outcomes:
            break
    print(f"requests during the switch: {len(outcomes)} in {time.monotonic() - killed_at:.1f} s: "
          f"{outcomes.count('cloud')} by the cloud, {outcomes.count('failed')} failed, then local again")
    assert outcomes.count("failed") == 0, outcomes
    assert outcomes[0] == "cloud", outcomes  # the first request after the kill is answered by the fallback
    assert outcomes[-1] == "local", outcomes  # and the local runtime serves again once it is back
    after = {r["name"]: r for r in farmhand.json("status", env=env)["runtimes"]}
    assert after["llama-server"]["restarts"] >= 1 and after["llama-server"]["pid"] != ls["pid"]
    assert after["gateway"]["pid"] == gw_pid  # the gateway rode it out

    # A re-run changes nothing.
    again = farmhand.json("apply", "--yes", "--overrides", str(tmp_path / "o.yaml"), env=env)
    assert again["changed"] is False, [s for s in again["steps"] if s["changed"]]

    # down and destroy: no process, no port, nothing in /tmp; the key never written.
    farmhand.run("down", check=True)
    assert not home_processes(farmhand.home)
    farmhand.run("destroy", "--yes", check=True)
    assert files_under(farmhand.home) <= {"data", "data/models", "data/models/gemma-3-270m-q4_k_m.gguf",
                                          "data/models/store.json"}
    assert listening_ports() - {int(cloud_url.split(":")[2].split("/")[0])} <= ports_before
    assert set(os.listdir("/tmp")) - tmp_before == set()
    assert cloud_proc.poll() is None
