"""Pull throughput: a 1 GiB file this benchmark generates, from a loopback HTTP server, fetched by
farmhand (`farmhand models pull`, digest verified, and the fetcher alone) and by `curl -o`,
interleaved in the same run, medians of BENCH_FETCH_RUNS; the disk is synced between runs.
Target: farmhand's throughput >= 0.95x curl's."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SIZE = int(os.environ.get("BENCH_FETCH_BYTES", str(1 << 30)))
RUNS = int(os.environ.get("BENCH_FETCH_RUNS", "5"))


def main(results: dict | None = None) -> dict:
    results = {} if results is None else results
    if not shutil.which("curl"):
        print("fetch bench skipped: no curl", file=sys.stderr)
        return results
    root = Path(tempfile.mkdtemp(prefix="farmhand-bench-fetch-"))
    www = root / "www"
    www.mkdir()
    digest = hashlib.sha256()
    with open(www / "big.gguf", "wb") as fh:
        head = b"GGUF\x03\x00\x00\x00"
        fh.write(head)
        digest.update(head)
        left = SIZE - len(head)
        while left:
            block = os.urandom(min(left, 1 << 20))
            fh.write(block)
            digest.update(block)
            left -= len(block)
    sha = digest.hexdigest()
    server = subprocess.Popen([sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1"], cwd=www,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        port = int(server.stdout.readline().split("port ")[1].split()[0])
        url = f"http://127.0.0.1:{port}/big.gguf"
        env = os.environ | {"FARMHAND_HOME": str(root / "home")}
        times: dict[str, list[float]] = {"curl": [], "farmhand_pull": [], "fetcher": []}
        for _ in range(RUNS):
            for kind in times:
                out = root / "out.gguf"
                subprocess.run(["sync"])
                t0 = time.perf_counter()
                if kind == "curl":
                    subprocess.run(["curl", "-s", "-f", "-o", str(out), url], check=True)
                elif kind == "farmhand_pull":
                    subprocess.run([sys.executable, "-m", "supervisor", "models", "pull", url, "--sha256", sha,
                                    "--name", "big"], env=env, check=True, capture_output=True)
                else:
                    subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                                    "from supervisor import fetcher; from supervisor.progress import Reporter; "
                                    "fetcher.download(sys.argv[1], Path(sys.argv[2]), "
                                    "fetcher.Expect(sha256=sys.argv[3]), label='big', report=Reporter(quiet=True))",
                                    url, str(out), sha], check=True, cwd=REPO)
                times[kind].append(time.perf_counter() - t0)
                out.unlink(missing_ok=True)
                subprocess.run([sys.executable, "-m", "supervisor", "models", "rm", "big"], env=env,
                               capture_output=True)
        for kind, samples in times.items():
            results[f"pull_1gib_{kind}_s"] = statistics.median(samples)
        curl = results["pull_1gib_curl_s"]
        results["pull_throughput_vs_curl"] = curl / results["pull_1gib_farmhand_pull_s"]
        results["fetcher_throughput_vs_curl"] = curl / results["pull_1gib_fetcher_s"]
        results["pull_1gib_mb_per_s_farmhand"] = SIZE / 1e6 / results["pull_1gib_farmhand_pull_s"]
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(root, ignore_errors=True)
    return results


if __name__ == "__main__":
    out = main()
    for key, value in out.items():
        print(f"{key:32s} {value:9.2f}")
    print(json.dumps(out), file=sys.stderr)
