"""farmhand benchmarks (`make bench`): medians of several runs, each against a baseline measured
in the same run. Needs the real llama-server build (.cache/wheels, built by `make test`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import requests

REPO = Path(__file__).resolve().parent.parent
RUNS = int(os.environ.get("BENCH_RUNS", "5"))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
from conftest import WHEELHOUSE, free_port  # noqa: E402


def median_ms(fn, runs=RUNS) -> float:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples)


def bench_scaling(results: dict) -> None:
    """`up` to every runtime ready and `down` to every runtime stopped, for N = 1, 2, 4 runtimes
    (the fake runtime: ready after 0.3 s, 0.3 s to exit after SIGTERM). Runtimes start and stop
    in parallel, so N = 4 should cost about what N = 1 does (target: <= 1.3x)."""
    from conftest import FAKE

    for n in (1, 2, 4):
        home = Path(tempfile.mkdtemp(prefix=f"farmhand-bench-n{n}-"))
        env = os.environ | {"FARMHAND_HOME": str(home)}
        specs = []
        for i in range(n):
            port = free_port()
            specs.append({"name": f"svc{i}", "backend": "fake", "port": port, "env": {},
                          "argv": [sys.executable, str(FAKE), "--port", str(port), "--ready-after", "0.3",
                                   "--stop-delay", "0.3"],
                          "readiness": {"url": f"http://127.0.0.1:{port}/health", "expect": 200},
                          "grace_s": 5, "start_timeout_s": 30})
        (home / "state").mkdir(parents=True)
        (home / "state" / "runtimes.json").write_text(json.dumps({"supervisor": {"port": 0}, "runtimes": specs}))
        ups, downs = [], []
        try:
            for _ in range(RUNS):
                t0 = time.perf_counter()
                subprocess.run([sys.executable, "-m", "supervisor", "up"], env=env, check=True, capture_output=True)
                ups.append((time.perf_counter() - t0) * 1000)
                t0 = time.perf_counter()
                subprocess.run([sys.executable, "-m", "supervisor", "down"], env=env, check=True, capture_output=True)
                downs.append((time.perf_counter() - t0) * 1000)
        finally:
            subprocess.run([sys.executable, "-m", "supervisor", "destroy", "--yes"], env=env, capture_output=True)
            shutil.rmtree(home, ignore_errors=True)
        results[f"up_all_ready_n{n}_ms"] = statistics.median(ups)
        results[f"down_all_stopped_n{n}_ms"] = statistics.median(downs)
    results["up_n4_over_n1"] = results["up_all_ready_n4_ms"] / results["up_all_ready_n1_ms"]
    results["down_n4_over_n1"] = results["down_all_stopped_n4_ms"] / results["down_all_stopped_n1_ms"]


def bench_slow_start(results: dict, load_s: float = 20.0) -> None:
    """A runtime that takes `load_s` to become ready (vLLM loading weights): how many readiness
    probes the supervisor sends, against the 15 ms poll it uses for fast starts (baseline, same
    start), and how late "ready" is against the moment the fake turned ready."""
    from conftest import FAKE

    home = Path(tempfile.mkdtemp(prefix="farmhand-bench-slow-"))
    env = os.environ | {"FARMHAND_HOME": str(home)}
    port = free_port()
    spec = {"name": "slow", "backend": "fake", "port": port, "env": {},
            "argv": [sys.executable, str(FAKE), "--port", str(port), "--ready-after", str(load_s), "--log-probes"],
            "readiness": {"url": f"http://127.0.0.1:{port}/health", "expect": 200}, "grace_s": 5,
            "start_timeout_s": load_s * 3}
    (home / "state").mkdir(parents=True)
    (home / "state" / "runtimes.json").write_text(json.dumps({"supervisor": {"port": 0}, "runtimes": [spec]}))
    try:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "supervisor", "up"], env=env, check=True, capture_output=True)
        up_s = time.perf_counter() - t0
        log = "".join(p.read_text(errors="replace") for p in (home / "state").rglob("slow*.log"))
        probes = log.count("probe /health")
    finally:
        subprocess.run([sys.executable, "-m", "supervisor", "destroy", "--yes"], env=env, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)
    results["slow_start_probes"] = probes
    results["slow_start_probes_vs_15ms_poll"] = probes / (load_s / 0.015)
    results["slow_start_ready_lag_pct"] = max(0.0, up_s - load_s) / load_s * 100


def main() -> None:
    if "--scaling-only" in sys.argv or "--slow-start-only" in sys.argv:
        results: dict = {}
        (bench_scaling if "--scaling-only" in sys.argv else bench_slow_start)(results)
        report(results)
        return
    home = Path(tempfile.mkdtemp(prefix="farmhand-bench-"))
    project = home / "project"
    project.mkdir()
    port = free_port()
    (home / "o.yaml").write_text("supervisor: {port: 0}\n")
    # What a user's shell has: Python writes and reuses bytecode (a session that disables it
    # would measure compiling farmhand's modules on every run, not farmhand).
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    env = os.environ | {"FARMHAND_HOME": str(home / "h"), "FARMHAND_WHEELHOUSE": str(WHEELHOUSE)}
    fh = [sys.executable, "-m", "supervisor"]

    def run(*args, check=True):
        return subprocess.run([*fh, *args], env=env, cwd=project, capture_output=True, text=True, check=check)

    results = {}
    try:
        run("apply", "--yes", "--port", str(port), "--overrides", str(home / "o.yaml"))
        run("apply", "--port", str(port), "--overrides", str(home / "o.yaml"))  # warm: bytecode written
        results["python_startup_ms"] = median_ms(lambda: subprocess.run([sys.executable, "-c", "pass"]))
        results["noop_bootstrap_ms"] = median_ms(lambda: subprocess.run(
            [str(REPO / "bootstrap.py"), "--port", str(port), "--overrides", str(home / "o.yaml")],
            env=env, cwd=project, capture_output=True, check=True))
        results["noop_apply_ms"] = median_ms(lambda: run("apply", "--port", str(port), "--overrides", str(home / "o.yaml")))
        results["status_ms"] = median_ms(lambda: run("status"))
        results["detect_ms"] = median_ms(lambda: run("detect", "--json"))
        detect = json.loads(run("detect", "--json").stdout)
        results["detect_probe_ms"] = {k: v["ms"] for k, v in detect["probes"].items()}

        # Readiness lag: the supervisor's "ready" vs. the first 200 seen by a 1 ms poller on the
        # same /health, both in wall-clock time, in the same run.
        lags, downs, backend_exits = [], [], []
        specs = json.loads((home / "h" / "state" / "runtimes.json").read_text())["runtimes"][0]
        for _ in range(RUNS):
            run("down")
            proc = subprocess.Popen([*fh, "up"], env=env, cwd=project, stdout=subprocess.DEVNULL)
            first_200 = None
            while first_200 is None:
                try:
                    if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                        first_200 = time.time()
                except requests.RequestException:
                    pass
                time.sleep(0.001)
            proc.wait()
            body = json.loads(run("status", "--json").stdout)
            lags.append((body["runtimes"][0]["ready_wall"] - first_200) * 1000)
            t0 = time.perf_counter()
            run("down")
            downs.append((time.perf_counter() - t0) * 1000)
            # Baseline: llama-server itself, started by hand, SIGTERM -> exit.
            own = subprocess.Popen(specs["argv"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while True:
                try:
                    if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                        break
                except requests.RequestException:
                    time.sleep(0.005)
            t0 = time.perf_counter()
            own.send_signal(signal.SIGTERM)
            own.wait()
            backend_exits.append((time.perf_counter() - t0) * 1000)
        results["readiness_lag_ms"] = statistics.median(lags)
        results["down_ms"] = statistics.median(downs)
        results["llama_server_sigterm_exit_ms"] = statistics.median(backend_exits)
        # `down` is a CLI process: its interpreter start is measured alone and taken out.
        results["cli_startup_ms"] = median_ms(lambda: run("--version"))
        results["down_overhead_ms"] = (results["down_ms"] - results["cli_startup_ms"]
                                       - results["llama_server_sigterm_exit_ms"])

        # Supervisor footprint while idle.
        run("up")
        sup = psutil.Process(json.loads((home / "h" / "state" / "supervisor.json").read_text())["pid"])
        idle_s = float(os.environ.get("BENCH_IDLE_S", "60"))
        cpu0 = sup.cpu_times()
        time.sleep(idle_s)  # measuring idle CPU over a fixed window is the point here
        cpu1 = sup.cpu_times()
        results["supervisor_rss_mb"] = sup.memory_info().rss / 2**20
        results["supervisor_idle_cpu_pct"] = 100 * ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / idle_s
        bench_scaling(results)
        bench_slow_start(results)
        import fetch
        import ollama_bench

        fetch.main(results)
        ollama_bench.main(results)
    finally:
        run("destroy", "--yes", "--purge-models", check=False)
        shutil.rmtree(home, ignore_errors=True)
    report(results)


def report(results: dict) -> None:
    targets = {"slow_start_probes_vs_15ms_poll": 0.2, "slow_start_ready_lag_pct": 6, "noop_bootstrap_ms": 300, "readiness_lag_ms": 20, "ollama_readiness_lag_ms": 20,
               "down_overhead_ms": 50, "detect_ms": 150,
               "supervisor_rss_mb": 40, "supervisor_idle_cpu_pct": 0.5, "up_n4_over_n1": 1.3, "down_n4_over_n1": 1.3}
    floors = {"pull_throughput_vs_curl": 0.95, "ollama_import_vs_curl": 0.9}
    for key, value in results.items():
        if isinstance(value, dict):
            print(f"{key:32s} " + ", ".join(f"{k} {v:.1f}" for k, v in value.items()))
            continue
        target, floor = targets.get(key), floors.get(key)
        if target is not None:
            mark = f"  ok (target <= {target:g})" if value <= target else f"  OVER (target <= {target:g})"
        elif floor is not None:
            mark = f"  ok (target >= {floor:g})" if value >= floor else f"  UNDER (target >= {floor:g})"
        else:
            mark = ""
        print(f"{key:32s} {value:9.2f}{mark}")
    print(json.dumps(results), file=sys.stderr)


if __name__ == "__main__":
    main()
