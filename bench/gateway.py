"""The gateway's "extra hop", measured: the same chat request to the real llama-server directly and
through LiteLLM's proxy in front of it (both started by `farmhand apply` with
`deployment.gateway: litellm`), interleaved in one run, so load falls on both alike. Prints p50
and p99 of each and of the difference. Each request asks for 8 tokens at temperature 0, so the
model's own work is the same on both paths.

    .venv/bin/python bench/gateway.py        (needs .cache/wheels and .cache/models: make test)
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from conftest import GEMMA, MODELS, WHEELHOUSE  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", "200"))


def timed(url: str, model: str) -> float:
    t0 = time.perf_counter()
    r = requests.post(f"{url}/chat/completions", timeout=120, json={
        "model": model, "max_tokens": 8, "temperature": 0, "messages": [{"role": "user", "content": "Hello."}]})
    r.raise_for_status()
    return (time.perf_counter() - t0) * 1000


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="farmhand-bench-gateway-"))
    env = os.environ | {"FARMHAND_HOME": str(work / "home"), "FARMHAND_WHEELHOUSE": str(WHEELHOUSE)}
    overrides = work / "o.json"
    overrides.write_text(json.dumps({"supervisor": {"port": 0}, "deployment": {"gateway": "litellm"},
                                     "models": {"gemma3-270m": {"sources": [f"file://{MODELS / GEMMA['file']}"]}}}))
    fh = [sys.executable, "-m", "supervisor"]
    try:
        t0 = time.perf_counter()
        subprocess.run([*fh, "apply", "--yes", "--profile", "cpu-small", "--overrides", str(overrides), "--json"],
                       env=env, cwd=work, check=True, capture_output=True)
        apply_s = time.perf_counter() - t0
        status = json.loads(subprocess.run([*fh, "status", "--json"], env=env, cwd=work, check=True,
                                           capture_output=True, text=True).stdout)
        port = {r["name"]: r["port"] for r in status["runtimes"]}
        direct, gateway = f"http://127.0.0.1:{port['llama-server']}/v1", f"http://127.0.0.1:{port['gateway']}/v1"
        for _ in range(10):  # warm-up: connections, the gateway's first-call work
            timed(direct, "gemma3-270m"), timed(gateway, "default")
        d, g = [], []
        for _ in range(RUNS):
            d.append(timed(direct, "gemma3-270m"))
            g.append(timed(gateway, "default"))
        diff = [b - a for a, b in zip(d, g)]
        print(json.dumps({
            "requests_each": RUNS, "apply_with_litellm_install_s": round(apply_s, 1),
            "direct_ms": {"p50": round(pct(d, .5), 1), "p99": round(pct(d, .99), 1)},
            "gateway_ms": {"p50": round(pct(g, .5), 1), "p99": round(pct(g, .99), 1)},
            "extra_hop_ms": {"p50": round(pct(diff, .5), 1), "p99": round(pct(diff, .99), 1),
                             "mean": round(statistics.mean(diff), 1)},
            "ratio_p50": round(pct(g, .5) / pct(d, .5), 2)}, indent=1))
    finally:
        subprocess.run([*fh, "destroy", "--yes", "--purge-models"], env=env, cwd=work, capture_output=True)


if __name__ == "__main__":
    main()
