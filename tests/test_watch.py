"""`farmhand status --watch` on a real terminal (tmux): the live table shows each runtime's state,
restarts, tokens/s and RSS, is redrawn when a runtime restarts, and Ctrl-C ends it cleanly (no
traceback, exit 0). The parsing of /metrics into rows is pinned on its own."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import uuid

import pytest
import requests
from conftest import fake_spec, free_port, wait_for

from supervisor.watch import rows_from_metrics

METRICS = """# TYPE farmhand_runtime_state gauge
farmhand_runtime_state{runtime="a",backend="llama-server",variant="cpu",state="ready"} 1
farmhand_runtime_state{runtime="a",backend="llama-server",variant="cpu",state="failed"} 0
farmhand_runtime_state{runtime="b",backend="vllm",variant="cpu",state="backoff"} 1
# TYPE farmhand_runtime_restarts counter
farmhand_runtime_restarts_total{runtime="a"} 0
farmhand_runtime_restarts_total{runtime="b"} 3
# TYPE farmhand_runtime_resident_memory_bytes gauge
farmhand_runtime_resident_memory_bytes{runtime="a"} 3.145728e+08
# TYPE llamacpp:tokens_predicted counter
llamacpp:tokens_predicted_total{runtime="a",role="default",model="m"} %s
"""


def test_rows_from_metrics_rate_from_two_scrapes():
    rows, seen = rows_from_metrics(METRICS % 100, {}, 0)
    assert [(r.runtime, r.state, r.restarts, r.tokens_per_s) for r in rows] == [("a", "ready", 0, None),
                                                                                ("b", "backoff", 3, None)]
    assert rows[0].rss_bytes == 314572800
    rows, _ = rows_from_metrics(METRICS % 160, seen, 2.0)
    assert rows[0].tokens_per_s == 30.0 and rows[1].tokens_per_s is None


def screen(session: str) -> str:
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout


def cells(session: str, runtime: str) -> list[str] | None:
    """The table row of `runtime` on the screen, cell by cell."""
    for line in screen(session).splitlines():
        parts = [c.strip() for c in line.strip().strip("│").split("│")]
        if parts and parts[0] == runtime:
            return parts
    return None


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)")
def test_watch_on_a_terminal_then_ctrl_c(farmhand, tmp_path):
    port = free_port()
    spec = fake_spec("svc", port, "--metrics") | {"metrics": {"url": f"http://127.0.0.1:{port}/metrics"}}
    farmhand.write_specs([spec])
    farmhand.run("up", check=True)
    session = f"farmhand-watch-{uuid.uuid4().hex[:8]}"
    done = tmp_path / "exit-code"
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in farmhand.env.items() if k.startswith(("FARMHAND", "PYTHON")))
    command = (f"cd {shlex.quote(str(farmhand.project))} && env {env} {shlex.quote(sys.executable)} -m supervisor "
               f"status --watch --interval 0.3 2>&1; echo $? > {shlex.quote(str(done))}; sleep 60")
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "30", command], check=True)
    try:
        wait_for(lambda: (cells(session, "svc") or [])[1:3] == ["ready", "0"], 30, "the table to show svc ready")
        shown = screen(session)
        for header in ("RUNTIME", "STATE", "RESTARTS", "TOK/S", "RSS"):
            assert header in shown, shown
        assert "MiB" in shown, shown

        record = json.loads((farmhand.home / "state" / "supervisor.json").read_text())
        health = requests.get(f"http://127.0.0.1:{record['port']}/health", timeout=5).json()
        os.kill(health["runtimes"][0]["pid"], signal.SIGKILL)
        wait_for(lambda: (cells(session, "svc") or [])[1:3] == ["ready", "1"], 30,
                 "the table to show svc ready again after one restart")

        subprocess.run(["tmux", "send-keys", "-t", session, "C-c"], check=True)
        wait_for(done.exists, 15, "status --watch to exit on Ctrl-C")
        assert done.read_text().strip() == "0", screen(session)
        after = screen(session)
        assert "Traceback" not in after and "stopped watching" in after, after
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
        farmhand.run("down", check=True)
