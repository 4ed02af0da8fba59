"""End to end, real: Debian's Prometheus scrapes the supervisor with the config `farmhand export
prometheus` writes, while the real llama-server serves the real Gemma. Asked through
Prometheus's own HTTP API: the runtime's state is 1 for ready, its restarts go up by one after a
kill -9, llama-server's token counters carry the model label; and every series the Grafana
dashboard in docs/ charts is one Prometheus saw here."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess

import pytest
import requests
import yaml
from checks import listening_ports
from conftest import REPO, free_port, home_processes, wait_for

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(shutil.which("prometheus") is None,
                                 reason="Debian's prometheus is not installed (apt-get install prometheus)")]
DASHBOARD = REPO / "docs" / "grafana-farmhand.json"
SERIES = re.compile(r"\b(farmhand_[a-z_]+|llamacpp:[a-z_]+)")


def query(base: str, expr: str) -> list[dict]:
    resp = requests.get(f"{base}/api/v1/query", params={"query": expr}, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()["data"]["result"]


def scalar(base: str, expr: str) -> float | None:
    result = query(base, expr)
    return float(result[0]["value"][1]) if len(result) == 1 else None


def chat(url: str) -> None:
    reply = requests.post(f"{url}/chat/completions", timeout=120, json={
        "model": "gemma3-270m", "max_tokens": 8, "temperature": 0,
        "messages": [{"role": "user", "content": "Name one colour."}]})
    assert reply.status_code == 200, reply.text


@pytest.fixture
def prometheus_with(tmp_path):
    """Start Prometheus on loopback with a config file; yields its base URL. Stopped after."""
    procs = []

    def start(config: str) -> str:
        (tmp_path / "prometheus.yml").write_text(config)
        check = subprocess.run(["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
                               capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr
        port = free_port()
        log = open(tmp_path / "prometheus.log", "w")
        procs.append(subprocess.Popen(
            ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, cwd=tmp_path))
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _ready(base), 60, "Prometheus to be ready")
        return base

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(30)


def _ready(base: str) -> bool:
    try:
        return requests.get(f"{base}/-/ready", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def test_prometheus_scrapes_the_supervisor_and_llama_server(farmhand, llama_wheel, gemma_gguf, tmp_path,
                                                            prometheus_with):
    sup_port = free_port()
    overrides = {"supervisor": {"port": sup_port, "grace_s": 5},
                 "models": {"gemma3-270m": {"sources": [f"file://{gemma_gguf}"]}}}
    (tmp_path / "o.yaml").write_text(yaml.safe_dump(overrides))
    ports_before = listening_ports()
    summary = farmhand.json("apply", "--yes", "--profile", "cpu-small", "--overrides", str(tmp_path / "o.yaml"),
                            timeout=1800)
    url = summary["url"]

    config = farmhand.run("export", "prometheus", "--interval", "1s", check=True).stdout
    assert yaml.safe_load(config)["scrape_configs"][0]["static_configs"] == [{"targets": [f"127.0.0.1:{sup_port}"]}]
    base = prometheus_with(config)
    try:
        for _ in range(3):
            chat(url)
        up = 'up{job="farmhand"}'
        wait_for(lambda: scalar(base, up) == 1, 60, "Prometheus to scrape the supervisor")
        ready = 'farmhand_runtime_state{runtime="llama-server",state="ready"}'
        wait_for(lambda: scalar(base, ready) == 1, 30, "the runtime's ready state in Prometheus")
        assert scalar(base, 'farmhand_runtime_state{runtime="llama-server",state="failed"}') == 0
        assert scalar(base, 'farmhand_backend_scrape_up{runtime="llama-server"}') == 1
        prompt = 'llamacpp:prompt_tokens_total{runtime="llama-server",model="gemma3-270m",role="default"}'
        wait_for(lambda: (scalar(base, prompt) or 0) > 0, 30, "llama-server's token counter with its model label")
        assert scalar(base, 'farmhand_role_info{role="default",runtime="llama-server",remote="false"}') == 1

        restarts = 'farmhand_runtime_restarts_total{runtime="llama-server"}'
        assert scalar(base, restarts) == 0
        pid = farmhand.json("status")["runtimes"][0]["pid"]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: scalar(base, restarts) == 1 and scalar(base, ready) == 1, 90,
                 "Prometheus to see one restart and the runtime ready again")

        # The dashboard: valid JSON, and each series it charts is one Prometheus has from this host.
        dashboard = json.loads(DASHBOARD.read_text())
        exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
        charted = {name for e in exprs for name in SERIES.findall(e)}
        charted = {re.sub(r"_(bucket|count|sum)$", "", n) if n.startswith("farmhand_runtime_probe") else n
                   for n in charted}
        chat(url)
        wait_for(lambda: (scalar(base, 'sum(farmhand_runtime_probe_seconds_count)') or 0) > 0, 60,
                 "a liveness probe observed")
        names = set(requests.get(f"{base}/api/v1/label/__name__/values", timeout=10).json()["data"])
        seen = {re.sub(r"_(bucket|count|sum)$", "", n) for n in names} | names
        assert charted and charted <= seen, f"the dashboard charts series Prometheus never saw: {charted - seen}"
        for expr in exprs:  # each expression parses and evaluates
            resp = requests.get(f"{base}/api/v1/query", params={"query": expr}, timeout=10)
            assert resp.status_code == 200 and resp.json()["status"] == "success", (expr, resp.text)
    finally:
        farmhand.run("down", check=True)
    assert not home_processes(farmhand.home)
    assert listening_ports() - {int(base.rsplit(":", 1)[1])} <= ports_before
