"""End to end, real, several runtimes: profiles/examples/two-llama-servers-and-cloud.yaml on this
CPU box. Two real llama-server processes (roles `fast`, small context; `default`, large) on
distinct assigned ports, a remote model written but not installed, a re-run that changes
nothing, `down` within each runtime's grace, and `destroy` that leaves nothing of farmhand's."""

from __future__ import annotations

import os

import psutil
import pytest
import requests
import yaml
from checks import TEMPLATE_TOKENS, files_under, listening_ports
from conftest import REPO, home_processes, pid_gone

from supervisor import llamafarm

pytestmark = pytest.mark.e2e
EXAMPLE = REPO / "profiles" / "examples" / "two-llama-servers-and-cloud.yaml"


def test_two_llama_servers_and_a_cloud_model(farmhand, llama_wheel, gemma_gguf, tmp_path):
    # The example as shipped, plus a free supervisor port for the test and the Gemma file this
    # checkout already fetched with the same pip source (the pip fetch itself is in test_e2e).
    overrides = yaml.safe_load(EXAMPLE.read_text())
    overrides["supervisor"] = {"port": 0, "grace_s": 5}
    overrides["deployment"]["gateway"] = None  # two llama-servers and LlamaFarm direct (test_gateway runs it)
    overrides["models"]["gemma3-270m"]["sources"] = [f"file://{gemma_gguf}"]
    (tmp_path / "o.yaml").write_text(yaml.safe_dump(overrides, sort_keys=False))
    ports_before = listening_ports()
    tmp_before = set(os.listdir("/tmp"))
    env = {"OPENAI_API_KEY": ""}

    summary = farmhand.json("apply", "--yes", "--overrides", str(tmp_path / "o.yaml"), timeout=1800, env=env)
    runtimes = {r["name"]: r for r in summary["runtimes"]}
    assert set(runtimes) == {"llama-server", "llama-server-fast"}
    assert runtimes["llama-server"]["port"] != runtimes["llama-server-fast"]["port"]
    roles = {r["role"]: r for r in summary["roles"]}
    assert [r["role"] for r in summary["roles"]] == ["default", "fast", "cloud"]
    assert roles["cloud"]["url"] == "https://api.openai.com/v1" and "runtime" not in roles["cloud"]
    assert any("OPENAI_API_KEY is not set" in w for w in summary["warnings"])

    # Both real processes answer, each with its own alias and context size.
    for role, ctx in (("default", 8192), ("fast", 1024)):
        url = roles[role]["url"]
        props = requests.get(url.removesuffix("/v1") + "/props", timeout=10).json()
        assert props["default_generation_settings"]["n_ctx"] == ctx
        for alias in ("gemma3-270m", role):  # what llamafarm.yaml sends, and the role as an alias
            reply = requests.post(f"{url}/chat/completions", timeout=120, json={
                "model": alias, "max_tokens": 12, "temperature": 0,
                "messages": [{"role": "user", "content": "Name one colour."}]}).json()
            assert reply["model"] in {"gemma3-270m", role}  # llama-server answers with one of its aliases
            content = reply["choices"][0]["message"]["content"]
            assert content.strip() and not any(t in content for t in TEMPLATE_TOKENS), content
    pids = {r["name"]: r["pid"] for r in farmhand.json("status", env=env)["runtimes"]}
    assert all("llama-server" in psutil.Process(pid).name() for pid in pids.values())

    # llamafarm.yaml: three entries, valid, the key only as a reference.
    doc = yaml.safe_load((farmhand.project / "llamafarm.yaml").read_text())
    llamafarm.validate(doc, "llamafarm.yaml")
    assert [(m["name"], m["model"], m.get("base_url")) for m in doc["runtime"]["models"]] == [
        ("default", "gemma3-270m", roles["default"]["url"]), ("fast", "gemma3-270m", roles["fast"]["url"]),
        ("cloud", "gpt-4o-mini", "https://api.openai.com/v1")]
    assert doc["runtime"]["models"][2]["api_key"] == "${env:OPENAI_API_KEY}"
    assert doc["runtime"]["models"][1]["model_api_parameters"] == {"temperature": 0.5, "max_tokens": 256}

    status = farmhand.json("status", env=env)
    assert [(r["role"], r["state"]) for r in status["roles"]] == [
        ("default", "ready"), ("fast", "ready"), ("cloud", "remote: OPENAI_API_KEY NOT SET")]

    # A re-run changes nothing.
    again = farmhand.json("apply", "--yes", "--overrides", str(tmp_path / "o.yaml"), env=env)
    assert again["changed"] is False, [s for s in again["steps"] if s["changed"]]

    # down stops both, each within its grace (they stop in parallel).
    down = farmhand.json("down")
    assert down["seconds"] < 5
    assert all(pid_gone(p) for p in pids.values())

    # destroy: no process, no port, no file of farmhand's (the models too with --purge-models).
    farmhand.run("destroy", "--yes", "--purge-models", check=True)
    assert files_under(farmhand.home) == set()
    assert not (farmhand.project / "llamafarm.yaml").exists()
    assert not home_processes(farmhand.home)
    assert listening_ports() == ports_before
    assert set(os.listdir("/tmp")) - tmp_before == set()
