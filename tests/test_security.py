"""Security checks on a real deployment (the real llama-server and Gemma): no secret in any
process's argv or in any file; a missing key fails closed; CORS refuses a foreign origin;
nothing listens beyond loopback unless configured; another local user cannot read state, logs
or models."""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import psutil
import pytest
import requests
from conftest import Farmhand, home_processes

pytestmark = pytest.mark.e2e


@pytest.fixture
def deployed(llama_server_binary, gemma_gguf):
    """An applied home with an API key, in a directory other users can reach (so permissions
    are farmhand's own, not the test's tmp dir's)."""
    parent = Path(tempfile.mkdtemp(prefix="farmhand-security-"))
    parent.chmod(0o755)
    home, project = parent / "home", parent / "project"
    home.mkdir(mode=0o755)
    project.mkdir()
    fh = Farmhand(home, project)
    key = secrets.token_hex(16)
    fh.env |= {"PATH": f"{llama_server_binary.parent}{os.pathsep}{os.environ['PATH']}", "FH_SECRET_KEY": key}
    overrides = parent / "o.yaml"
    overrides.write_text(json.dumps({
        "supervisor": {"port": 0},
        "deployment": {"runtimes": {"llama-server": {"install": {"method": "path"}, "api_key_env": "FH_SECRET_KEY"}}},
        "models": {"gemma3-270m": {"sources": [f"file://{gemma_gguf}"]}}}))
    try:  # a failed apply may have started the supervisor: the teardown runs whatever happened
        summary = fh.json("apply", "--yes", "--profile", "cpu-small", "--overrides", str(overrides))
        yield fh, key, summary
    finally:
        fh.run("destroy", "--yes", "--purge-models")
        leftovers = home_processes(home)
        for proc in leftovers:
            proc.kill()
        shutil.rmtree(parent)
        assert not leftovers


def all_files(*roots: Path):
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                yield path


def test_the_key_is_in_no_argv_and_no_file_and_is_required(deployed):
    fh, key, summary = deployed
    for proc in psutil.process_iter(["cmdline"]):
        assert key not in " ".join(proc.info["cmdline"] or []), proc.info["cmdline"]
    for path in all_files(fh.home, fh.project):
        if path.stat().st_size < 50 << 20:  # everything but the model itself
            assert key.encode() not in path.read_bytes(), path
    doc = (fh.project / "llamafarm.yaml").read_text()
    assert "api_key: \"${env:FH_SECRET_KEY}\"" in doc
    url = summary["url"]
    body = {"model": "gemma3-270m", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    assert requests.post(f"{url}/chat/completions", json=body, timeout=30).status_code == 401
    assert requests.post(f"{url}/chat/completions", json=body, timeout=30,
                         headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert requests.post(f"{url}/chat/completions", json=body, timeout=60,
                         headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_a_missing_key_fails_closed(deployed):
    fh, _key, _summary = deployed
    fh.run("down", check=True)
    env = {k: v for k, v in fh.env.items() if k != "FH_SECRET_KEY"}
    proc = subprocess.run([*fh.argv(), "up"], env=env, capture_output=True, text=True, timeout=120, cwd=fh.project)
    assert proc.returncode == 1
    assert "FH_SECRET_KEY is not set (or empty): refusing to start llama-server without its API key" in proc.stderr
    status = json.loads(subprocess.run([*fh.argv(), "status", "--json"], env=env, capture_output=True, text=True,
                                       cwd=fh.project).stdout)
    (rt,) = status["runtimes"]
    assert status["status"] == "failed" and rt["state"] == "failed" and rt["pid"] is None
    assert not any("llama-server" in p.name() for p in home_processes(fh.home))
    fh.run("down", check=True)
    assert fh.json("up")["status"] == "ok"  # with the key back in the environment, it starts


def test_cors_refuses_a_foreign_origin(deployed):
    fh, key, summary = deployed
    base = summary["url"].removesuffix("/v1")
    for method, path in (("GET", "/health"), ("OPTIONS", "/v1/chat/completions")):
        resp = requests.request(method, base + path, timeout=10, headers={
            "Origin": "http://evil.example", "Access-Control-Request-Method": "POST",
            "Authorization": f"Bearer {key}"})
        allowed = resp.headers.get("Access-Control-Allow-Origin")
        assert allowed not in ("*", "http://evil.example"), resp.headers
        assert resp.headers.get("Access-Control-Allow-Credentials") != "true", resp.headers


def test_nothing_listens_beyond_loopback(deployed):
    fh, _key, _summary = deployed
    pids = {p.pid for p in home_processes(fh.home)}
    listeners = [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in pids]
    assert len(listeners) >= 2  # the supervisor's /health and llama-server
    for conn in listeners:
        assert ipaddress.ip_address(conn.laddr.ip).is_loopback, conn


def test_beyond_loopback_is_a_named_setting_that_plan_warns_about(deployed, tmp_path):
    fh, _key, _summary = deployed
    overrides = tmp_path / "o.yaml"
    overrides.write_text("deployment: {runtimes: {llama-server: {host: 0.0.0.0, api_key_env: FH_SECRET_KEY}}}\n")
    plan = fh.json("plan", "--profile", "cpu-small", "--overrides", str(overrides))
    (rt,) = plan["runtimes"]
    assert rt["argv"][rt["argv"].index("--host") + 1] == "0.0.0.0"
    assert any(w.startswith("runtime llama-server listens on 0.0.0.0:") and "needs the key in $FH_SECRET_KEY" in w
               for w in plan["warnings"]), plan["warnings"]


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_another_local_user_cannot_read_state_logs_or_models(deployed):
    fh, _key, _summary = deployed
    state, data = fh.home / "state", fh.home / "data"
    targets = [state / "ledger.json", state / "runtimes.json", state / "deployment.json", state / "supervisor.json",
               state / "logs" / "llama-server.log", data / "models" / "gemma-3-270m-q4_k_m.gguf"]
    for path in targets:
        assert path.exists(), path
        assert path.stat().st_mode & 0o077 == 0 or path.parent.stat().st_mode & 0o077 == 0, oct(path.stat().st_mode)
        denied = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "head", "-c1",
                                 str(path)], capture_output=True, text=True)
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, (path, denied.stderr)
    for directory in (state, data, state / "logs", data / "models"):
        assert directory.stat().st_mode & 0o077 == 0, (directory, oct(directory.stat().st_mode))
