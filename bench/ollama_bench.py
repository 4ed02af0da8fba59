"""Ollama benchmarks, against the test fake (tests/fakes/fake_ollama.py) on loopback, each against a
baseline measured in the same run (medians of BENCH_RUNS):

- readiness lag: `farmhand up` of an Ollama runtime; the supervisor's "ready" vs the first 200
  from GET /api/version seen by a 1 ms poller (target <= 20 ms, as for llama-server);
- offline import of the real 253 MB Gemma GGUF: farmhand's blob upload + create (what apply runs)
  vs `curl --data-binary @FILE` to the same endpoint (target: farmhand's throughput >= 0.9x
  curl's), and, stricter, vs `curl -T FILE` (curl streaming the file instead of reading it whole).
"""

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

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
RUNS = int(os.environ.get("BENCH_RUNS", "5"))
FAKE = REPO / "tests" / "fakes" / "fake_ollama.py"
GEMMA = REPO / ".cache" / "models" / "gemma-3-270m-q4_k_m.gguf"


def _wait_200(url: str, timeout: float = 30.0) -> float:
    """Poll every 1 ms; the wall time of the first 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return time.time()
        except requests.RequestException:
            pass
        time.sleep(0.001)
    raise RuntimeError(f"{url} never answered 200")


def readiness(results: dict, root: Path) -> None:
    from conftest import free_port

    home = root / "home"
    port = free_port()
    env = os.environ | {"FARMHAND_HOME": str(home)}
    spec = {"name": "ollama", "backend": "ollama", "port": port,
            "env": {"OLLAMA_HOST": f"127.0.0.1:{port}", "OLLAMA_MODELS": str(root / "store")},
            "argv": [sys.executable, str(FAKE), "serve"],
            "readiness": {"url": f"http://127.0.0.1:{port}/api/version", "expect": 200},
            "grace_s": 5, "start_timeout_s": 30}
    (home / "state").mkdir(parents=True)
    (home / "state" / "runtimes.json").write_text(json.dumps({"supervisor": {"port": 0}, "runtimes": [spec]}))
    fh = [sys.executable, "-m", "supervisor"]
    lags = []
    try:
        for _ in range(RUNS):
            proc = subprocess.Popen([*fh, "up"], env=env, stdout=subprocess.DEVNULL)
            first_200 = _wait_200(f"http://127.0.0.1:{port}/api/version")
            proc.wait()
            body = json.loads(subprocess.run([*fh, "status", "--json"], env=env, capture_output=True,
                                             text=True).stdout)
            lags.append((body["runtimes"][0]["ready_wall"] - first_200) * 1000)
            subprocess.run([*fh, "down"], env=env, capture_output=True, check=True)
    finally:
        subprocess.run([*fh, "down"], env=env, capture_output=True)
    results["ollama_readiness_lag_ms"] = statistics.median(lags)


def import_vs_curl(results: dict, root: Path) -> None:
    from conftest import free_port

    from supervisor.backends.ollama_api import OllamaAPI
    from supervisor.progress import Reporter

    if not shutil.which("curl") or not GEMMA.exists():
        print("ollama import bench skipped: needs curl and the Gemma GGUF (.cache/models, `make test` fetches it)",
              file=sys.stderr)
        return
    port = free_port()
    store = root / "import-store"
    server = subprocess.Popen([sys.executable, str(FAKE), "serve"], stdout=subprocess.DEVNULL,
                              env=os.environ | {"OLLAMA_HOST": f"127.0.0.1:{port}", "OLLAMA_MODELS": str(store)})
    url = f"http://127.0.0.1:{port}"
    digest = hashlib.sha256(GEMMA.read_bytes()).hexdigest()
    blob = store / "blobs" / f"sha256-{digest}"
    api, quiet = OllamaAPI(url), Reporter(quiet=True)
    ours, theirs, streamed = [], [], []
    # "Expect:" off: this fake (Python's http.server) does not answer 100-continue, so curl would
    # wait a second before sending; upstream's Go server answers it at once.
    curl = ["curl", "-sS", "-f", "-o", "/dev/null", "-X", "POST", "-H", "Expect:", f"{url}/api/blobs/sha256:{digest}"]
    try:
        _wait_200(f"{url}/api/version")
        for _ in range(max(RUNS, 9)):  # a 2-core box is noisy: more samples for the median
            for how, samples in ((["--data-binary", f"@{GEMMA}"], theirs), (["-T", str(GEMMA)], streamed)):
                blob.unlink(missing_ok=True)
                t0 = time.perf_counter()
                subprocess.run([*curl, *how], check=True)
                samples.append(time.perf_counter() - t0)
            blob.unlink()
            t0 = time.perf_counter()
            if not api.has_blob(digest):
                api.push_blob(GEMMA, digest, report=quiet, label="bench")
            api.create("farmhand/bench:latest", {GEMMA.name: f"sha256:{digest}"}, None, None)
            ours.append(time.perf_counter() - t0)
    finally:
        server.terminate()
        server.wait(10)
    size = GEMMA.stat().st_size
    results["ollama_import_mb_s"] = size / statistics.median(ours) / 1e6
    results["curl_data_binary_mb_s"] = size / statistics.median(theirs) / 1e6
    results["curl_upload_file_mb_s"] = size / statistics.median(streamed) / 1e6  # -T streams; the stricter one
    results["ollama_import_vs_curl"] = statistics.median(theirs) / statistics.median(ours)
    results["ollama_import_vs_curl_T"] = statistics.median(streamed) / statistics.median(ours)


def main(results: dict | None = None) -> dict:
    results = {} if results is None else results
    root = Path(tempfile.mkdtemp(prefix="farmhand-bench-ollama-"))
    try:
        readiness(results, root)
        import_vs_curl(results, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return results


if __name__ == "__main__":
    out = main()
    for key, value in out.items():
        print(f"{key:32s} {value:9.2f}")
