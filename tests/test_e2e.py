"""End to end, real: farmhand's installer builds llama-server, apply serves the real Gemma 3
270M GGUF, a real chat completion comes back, re-apply changes nothing, down/up/destroy leave
nothing behind."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest
import requests
from conftest import free_port, home_processes

pytestmark = pytest.mark.e2e


def listening_ports() -> set[int]:
    return {c.laddr.port for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


def test_apply_serves_the_real_model_and_destroy_leaves_nothing(farmhand, llama_wheel, tmp_path):
    port = free_port()
    overrides = tmp_path / "overrides.yaml"
    overrides.write_text("supervisor:\n  port: 0\n")
    tmp_before = set(os.listdir("/tmp"))
    ports_before = listening_ports()

    summary = farmhand.json("apply", "--yes", "--port", str(port), "--overrides", str(overrides), timeout=1800)
    assert summary["changed"] is True
    assert summary["backend"] == "llama-server"
    assert summary["backend_version"].startswith("0.6.0")
    assert summary["model"] == "gemma3-270m"
    assert summary["url"] == f"http://127.0.0.1:{port}/v1"

    # A real completion from the real model.
    reply = requests.post(f"{summary['url']}/chat/completions", timeout=120, json={
        "model": "gemma3-270m", "max_tokens": 16,
        "messages": [{"role": "user", "content": "Name one colour."}]}).json()
    assert reply["choices"][0]["message"]["content"].strip()

    # The config LlamaFarm reads points at it and validates against LlamaFarm's schema.
    config = (farmhand.project / "llamafarm.yaml").read_text()
    assert f"base_url: \"http://127.0.0.1:{port}/v1\"" in config
    assert "provider: \"openai\"" in config

    # Re-apply: no changes.
    again = farmhand.json("apply", "--yes", "--port", str(port), "--overrides", str(overrides))
    assert again["changed"] is False, again["steps"]
    assert all(not s["changed"] for s in again["steps"])

    status = farmhand.json("status")
    (runtime,) = status["runtimes"]
    assert status["status"] == "ok" and runtime["state"] == "ready" and runtime["port"] == port
    server_pid = runtime["pid"]
    assert "llama-server" in psutil.Process(server_pid).name()

    # down: no llama-server left, port free; up brings it back.
    farmhand.run("down", check=True)
    assert not psutil.pid_exists(server_pid) or psutil.Process(server_pid).status() == psutil.STATUS_ZOMBIE
    assert port not in listening_ports()
    assert not home_processes(farmhand.home)
    assert farmhand.run("down", check=True).returncode == 0  # idempotent
    up = farmhand.json("up")
    assert up["status"] == "ok"
    assert requests.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200

    # destroy: nothing of farmhand's left under FARMHAND_HOME but the model, no process, no port.
    farmhand.run("destroy", "--yes", check=True)
    assert files_under(farmhand.home) == {"data", "data/models", "data/models/gemma-3-270m-q4_k_m.gguf",
                                          "data/models/store.json"}
    assert not (farmhand.project / "llamafarm.yaml").exists()  # farmhand created it, nobody changed it
    assert not home_processes(farmhand.home)
    assert listening_ports() == ports_before
    assert set(os.listdir("/tmp")) - tmp_before == set()

    # --purge-models removes the model too: the home is empty.
    farmhand.run("destroy", "--yes", "--purge-models", check=True)
    assert files_under(farmhand.home) == set()


def test_user_sections_survive_and_a_backup_is_kept(farmhand, llama_wheel, tmp_path):
    port = free_port()
    overrides = tmp_path / "overrides.yaml"
    overrides.write_text("supervisor:\n  port: 0\n")
    user_config = (
        "# my project\nversion: v1\nname: shop\nnamespace: acme\n"
        "prompts:\n  - name: support\n    messages:\n      - {role: system, content: Be brief.}\n"
        "runtime:\n  models:\n    - name: cloud\n      provider: openai\n      model: gpt-4o\n"
        "      api_key: ${env:OPENAI_API_KEY}\n"
    )
    (farmhand.project / "llamafarm.yaml").write_text(user_config)
    farmhand.json("apply", "--yes", "--port", str(port), "--overrides", str(overrides), timeout=1800)
    import yaml

    doc = yaml.safe_load((farmhand.project / "llamafarm.yaml").read_text())
    assert doc["name"] == "shop" and doc["namespace"] == "acme"
    assert doc["prompts"][0]["name"] == "support"
    names = [m["name"] for m in doc["runtime"]["models"]]
    assert names == ["cloud", "gemma3-270m"]
    assert doc["runtime"]["models"][0]["api_key"] == "${env:OPENAI_API_KEY}"
    assert "# my project" in (farmhand.project / "llamafarm.yaml").read_text()
    backups = list(farmhand.project.glob("llamafarm.yaml.farmhand-backup-*"))
    assert len(backups) == 1 and backups[0].read_text() == user_config

    # destroy keeps the user's file and takes farmhand's entry out.
    farmhand.run("destroy", "--yes", check=True)
    doc = yaml.safe_load((farmhand.project / "llamafarm.yaml").read_text())
    assert [m["name"] for m in doc["runtime"]["models"]] == ["cloud"]
    assert doc["prompts"][0]["name"] == "support"
