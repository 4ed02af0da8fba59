"""End to end, real: llama-server as a router (`router: true`), one port for three roles of the real
Gemma with different contexts, at most two loaded at once. Each role answers by its name with its
own context; asking for the third evicts one and loads it; asking for the evicted one loads it
again; `status` shows which are loaded; `down` leaves none of the router's children behind."""

from __future__ import annotations

import os

import pytest
import requests
import yaml
from checks import TEMPLATE_TOKENS, files_under, listening_ports
from conftest import home_processes, wait_for

pytestmark = pytest.mark.e2e
ROLES = {"default": 4096, "fast": 1024, "long": 2048}


def chat(url: str, role: str) -> str:
    reply = requests.post(f"{url}/chat/completions", timeout=180, json={
        "model": role, "max_tokens": 12, "temperature": 0,
        "messages": [{"role": "user", "content": "Name one colour."}]})
    assert reply.status_code == 200, (role, reply.text)
    content = reply.json()["choices"][0]["message"]["content"]
    assert content.strip() and not any(t in content for t in TEMPLATE_TOKENS), (role, content)
    return content


def test_one_router_serves_three_roles_by_name_and_evicts(farmhand, llama_wheel, gemma_gguf, tmp_path):
    overrides = {
        "supervisor": {"port": 0, "grace_s": 5},
        "deployment": {
            "runtimes": {"llama-server": None, "pool": {"backend": "llama-server", "router": True, "models_max": 2}},
            "roles": {role: {"use": [{"model": "gemma3-270m", "runtime": "pool", "ctx_size": ctx}]}
                      for role, ctx in ROLES.items()}},
        "models": {"gemma3-270m": {"sources": [f"file://{gemma_gguf}"]}},
    }
    (tmp_path / "o.yaml").write_text(yaml.safe_dump(overrides, sort_keys=False))
    ports_before = listening_ports()
    tmp_before = set(os.listdir("/tmp"))

    summary = farmhand.json("apply", "--yes", "--profile", "cpu-small", "--overrides", str(tmp_path / "o.yaml"),
                            timeout=1800)
    (runtime,) = summary["runtimes"]
    assert runtime["name"] == "pool"
    url = next(r["url"] for r in summary["roles"] if r["role"] == "default")
    base = url.removesuffix("/v1")
    assert {r["url"] for r in summary["roles"]} == {url}  # three roles, one port

    def loaded() -> list[str]:
        (rt,) = farmhand.json("status")["runtimes"]
        return rt.get("loaded", [])

    # The first two presets load at start; each role answers by its name with its own context.
    wait_for(lambda: loaded() == ["default", "fast"], 120, "default and fast to load")
    for role in ("default", "fast"):
        chat(url, role)
        props = requests.get(f"{base}/props", params={"model": role}, timeout=30).json()
        assert props["default_generation_settings"]["n_ctx"] == ROLES[role], (role, props)

    # The third role evicts one (at most two loaded) and serves; the one evicted comes back when asked.
    chat(url, "long")
    now = loaded()
    assert "long" in now and len(now) == 2, now
    (evicted,) = {"default", "fast"} - set(now)
    chat(url, evicted)
    assert evicted in loaded() and len(loaded()) == 2
    shown = farmhand.run("status", check=True).stdout
    assert "(loaded: " in shown, shown

    # A re-run changes nothing.
    again = farmhand.json("apply", "--yes", "--profile", "cpu-small", "--overrides", str(tmp_path / "o.yaml"))
    assert again["changed"] is False, [s for s in again["steps"] if s["changed"]]

    # down: the router and every model child it started are gone, their ports free.
    farmhand.run("down", check=True)
    assert not home_processes(farmhand.home)
    assert listening_ports() <= ports_before
    farmhand.run("destroy", "--yes", check=True)
    assert files_under(farmhand.home) <= {"data", "data/models", "data/models/gemma-3-270m-q4_k_m.gguf",
                                          "data/models/store.json"}
    assert set(os.listdir("/tmp")) - tmp_before == set()
