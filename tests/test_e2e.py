"""End to end, real: farmhand's installer builds llama-server, apply serves the real Gemma 3
270M GGUF, a real chat completion comes back, re-apply changes nothing, down/up/destroy leave
nothing behind."""

from __future__ import annotations

import os
import shlex
import subprocess

import psutil
import pytest
import requests
from checks import assert_real_gemma_answers, files_under, listening_ports
from conftest import free_port, home_processes, pid_gone

pytestmark = pytest.mark.e2e


def test_apply_serves_the_real_model_and_destroy_leaves_nothing(farmhand, llama_wheel, tmp_path):
    port = free_port()
    overrides = tmp_path / "overrides.yaml"
    overrides.write_text("supervisor:\n  port: 0\n")
    tmp_before = set(os.listdir("/tmp"))
    ports_before = listening_ports()

    summary = farmhand.json("apply", "--yes", "--port", str(port), "--overrides", str(overrides), timeout=1800)
    assert summary["changed"] is True
    (runtime,) = summary["runtimes"]
    assert runtime["backend"] == "llama-server" and runtime["version"].startswith("0.6.0")
    assert summary["model"] == "gemma3-270m"
    assert summary["url"] == f"http://127.0.0.1:{port}/v1"
    # owner-only: the backend's venv (venv makes it 0755) and the built wheel it came from
    venvs = list((farmhand.home / "data" / "backends").glob("*/*/venv"))
    assert venvs and all(v.stat().st_mode & 0o077 == 0 for v in venvs), [oct(v.stat().st_mode) for v in venvs]
    assert llama_wheel.stat().st_mode & 0o077 == 0, oct(llama_wheel.stat().st_mode)

    # Real answers from the real model, in its own chat format.
    assert_real_gemma_answers(summary["url"], "gemma3-270m")

    # The config LlamaFarm reads points at it and validates against LlamaFarm's schema.
    import yaml

    from supervisor import llamafarm

    doc = yaml.safe_load((farmhand.project / "llamafarm.yaml").read_text())
    llamafarm.validate(doc, "llamafarm.yaml")
    assert doc["runtime"]["default_model"] == "default"
    assert doc["runtime"]["models"] == [{
        "name": "default", "description": f"gemma3-270m on llama-server (127.0.0.1:{port}), managed by farmhand",
        "provider": "openai", "model": "gemma3-270m", "base_url": f"http://127.0.0.1:{port}/v1", "default": True,
        "model_api_parameters": {"max_tokens": 2048}}]  # every request bounded (a quarter of the 8192 context)

    # The command the summary prints works (the launcher under FARMHAND_HOME/bin).
    shown = subprocess.run([*shlex.split(summary["command"]), "status"], capture_output=True, text=True,
                           env=farmhand.env, timeout=60)
    assert shown.returncode == 0 and "ready" in shown.stdout, shown.stdout + shown.stderr

    # Re-apply: no changes.
    again = farmhand.json("apply", "--yes", "--port", str(port), "--overrides", str(overrides))
    assert again["changed"] is False, again["steps"]
    assert all(not s["changed"] for s in again["steps"])

    status = farmhand.json("status")
    (runtime,) = status["runtimes"]
    assert status["status"] == "ok" and runtime["state"] == "ready" and runtime["port"] == port
    assert [(r["role"], r["model"], r["url"], r["state"]) for r in status["roles"]] == [
        ("default", "gemma3-270m", f"http://127.0.0.1:{port}/v1", "ready")]
    server_pid = runtime["pid"]
    assert "llama-server" in psutil.Process(server_pid).name()

    # down: no llama-server left, port free; up brings it back.
    farmhand.run("down", check=True)
    assert pid_gone(server_pid)
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
    assert names == ["cloud", "default"]
    assert doc["runtime"]["models"][0]["api_key"] == "${env:OPENAI_API_KEY}"
    assert "# my project" in (farmhand.project / "llamafarm.yaml").read_text()
    backups = list(farmhand.project.glob("llamafarm.yaml.farmhand-backup-*"))
    assert len(backups) == 1 and backups[0].read_text() == user_config

    # destroy keeps the user's file and takes farmhand's entry out.
    farmhand.run("destroy", "--yes", check=True)
    doc = yaml.safe_load((farmhand.project / "llamafarm.yaml").read_text())
    assert [m["name"] for m in doc["runtime"]["models"]] == ["cloud"]
    assert doc["prompts"][0]["name"] == "support"
