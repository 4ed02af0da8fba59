"""What GET /metrics costs the supervisor, with 4 runtimes (real processes serving llama-server's
metric families), in one run: first PHASE_S seconds with no scrapes, then PHASE_S seconds with a
scrape every second. Reports the scrape's latency (p50, max), the supervisor's RSS at the end of
each phase and its CPU use in each (percent of one core).

    .venv/bin/python bench/metrics.py        (BENCH_PHASE_S, default 20)
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

import psutil
import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from conftest import fake_spec, free_port  # noqa: E402

PHASE_S = float(os.environ.get("BENCH_PHASE_S", "20"))
RUNTIMES = 4


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="farmhand-bench-metrics-"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"} | {"FARMHAND_HOME": str(work)}
    (work / "state").mkdir(parents=True)
    specs = []
    for i in range(RUNTIMES):
        port = free_port()
        specs.append(fake_spec(f"rt{i}", port, "--metrics") | {"metrics": {"url": f"http://127.0.0.1:{port}/metrics"},
                                                               "roles": [f"role{i}"], "models": ["gemma3-270m"]})
    (work / "state" / "runtimes.json").write_text(json.dumps({"supervisor": {"host": "127.0.0.1", "port": 0},
                                                              "runtimes": specs, "digest": "bench"}))
    fh = [sys.executable, "-m", "supervisor"]
    subprocess.run([*fh, "up"], env=env, check=True, capture_output=True)
    try:
        record = json.loads((work / "state" / "supervisor.json").read_text())
        sup = psutil.Process(record["pid"])
        url = f"http://127.0.0.1:{record['port']}/metrics"

        def cpu() -> float:
            t = sup.cpu_times()
            return t.user + t.system

        time.sleep(2)  # settle after start
        c0, t0 = cpu(), time.monotonic()
        time.sleep(PHASE_S)
        idle_cpu = (cpu() - c0) / (time.monotonic() - t0) * 100
        idle_rss = sup.memory_info().rss
        scrapes: list[float] = []
        c0, t0 = cpu(), time.monotonic()
        while time.monotonic() - t0 < PHASE_S:
            s = time.perf_counter()
            resp = requests.get(url, timeout=10)
            scrapes.append((time.perf_counter() - s) * 1000)
            assert resp.status_code == 200 and "farmhand_runtime_state" in resp.text
            time.sleep(max(0.0, 1.0 - (time.perf_counter() - s)))
        busy_cpu = (cpu() - c0) / (time.monotonic() - t0) * 100
        busy_rss = sup.memory_info().rss
    finally:
        subprocess.run([*fh, "down"], env=env, capture_output=True)
    out = {"runtimes": RUNTIMES, "scrape_ms_p50": round(statistics.median(scrapes), 1),
           "scrape_ms_max": round(max(scrapes), 1), "scrapes": len(scrapes),
           "idle_cpu_percent": round(idle_cpu, 2), "scraped_cpu_percent": round(busy_cpu, 2),
           "rss_idle_mib": round(idle_rss / 2**20, 1), "rss_scraped_mib": round(busy_rss / 2**20, 1),
           "rss_delta_mib": round((busy_rss - idle_rss) / 2**20, 2)}
    print(f"scrape p50 {out['scrape_ms_p50']} ms (max {out['scrape_ms_max']}), RSS {out['rss_idle_mib']} -> "
          f"{out['rss_scraped_mib']} MiB, CPU idle {out['idle_cpu_percent']}% / scraped every 1s "
          f"{out['scraped_cpu_percent']}%")
    print(json.dumps(out), file=sys.stderr)


if __name__ == "__main__":
    main()
