"""The commands users wait on, timed for two checkouts of farmhand in the same run, interleaved
and taking turns to go first (so machine load, and whatever the other side's last command left
running, falls on both alike): a no-op `./bootstrap.py`, `status`, `up` and `down`.
Prints each median and the ratio NEW / BASE. Each checkout runs with its own .venv.

    .venv/bin/python bench/revisions.py BASE_CHECKOUT [NEW_CHECKOUT]   (NEW: this one)

Needs .cache/wheels and .cache/models here (make test builds and fetches them).
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from conftest import FAKE, GEMMA, MODELS, WHEELHOUSE, free_port  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", "7"))


class Checkout:
    def __init__(self, root: Path, work: Path, label: str):
        self.root, self.label = root, label
        self.python = str(root / ".venv" / "bin" / "python")
        self.home = work / f"home-{label}"
        self.project = work / f"project-{label}"
        self.project.mkdir(parents=True)
        self.env = os.environ | {"FARMHAND_HOME": str(self.home), "FARMHAND_WHEELHOUSE": str(WHEELHOUSE)}
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)  # users' Pythons reuse bytecode
        self.overrides = work / f"o-{label}.yaml"
        self.port = free_port()
        self.overrides.write_text(json.dumps({"supervisor": {"port": 0}, "models": {"gemma3-270m": {
            "sources": [f"file://{MODELS / GEMMA['file']}"]}}}))

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([self.python, "-m", "supervisor", *args], env=self.env, cwd=self.project,
                              capture_output=True, text=True, check=check)

    def bootstrap(self) -> None:
        subprocess.run([self.python, str(self.root / "bootstrap.py"), "--profile", "cpu-small", "--port",
                        str(self.port), "--overrides", str(self.overrides)], env=self.env, cwd=self.project,
                       capture_output=True, check=True)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def main() -> None:
    base = Path(sys.argv[1]).resolve()
    new = Path(sys.argv[2]).resolve() if len(sys.argv) > 2 else REPO
    work = Path(tempfile.mkdtemp(prefix="farmhand-bench-revisions-"))
    sides = [Checkout(base, work, "base"), Checkout(new, work, "new")]
    samples: dict[str, dict[str, list[float]]] = {s.label: {} for s in sides}
    try:
        for side in sides:  # the first apply, then one warm-up run (bytecode written)
            side.run("apply", "--yes", "--profile", "cpu-small", "--port", str(side.port), "--overrides",
                     str(side.overrides))
            side.bootstrap()
        for i in range(RUNS):
            for side in sides if i % 2 == 0 else sides[::-1]:  # who goes first alternates: no position bias
                got = samples[side.label]
                got.setdefault("noop_bootstrap_ms", []).append(timed(side.bootstrap))
                got.setdefault("status_ms", []).append(timed(lambda s=side: s.run("status")))
                got.setdefault("down_ms", []).append(timed(lambda s=side: s.run("down")))
                got.setdefault("up_ms", []).append(timed(lambda s=side: s.run("up")))
        # up and down of a fake runtime alone (no model load): the supervisor's own cost
        for side in sides:
            side.run("destroy", "--yes", "--purge-models", check=False)
            fake = free_port()
            (side.home / "state").mkdir(parents=True, exist_ok=True)
            (side.home / "state" / "runtimes.json").write_text(json.dumps({"supervisor": {"port": 0}, "runtimes": [{
                "name": "svc", "backend": "fake", "port": fake, "env": {},
                "argv": [sys.executable, str(FAKE), "--port", str(fake)],
                "readiness": {"url": f"http://127.0.0.1:{fake}/health", "expect": 200}, "grace_s": 5,
                "start_timeout_s": 30}]}))
        for i in range(RUNS):
            for side in sides if i % 2 == 0 else sides[::-1]:
                got = samples[side.label]
                got.setdefault("up_fake_ms", []).append(timed(lambda s=side: s.run("up")))
                got.setdefault("down_fake_ms", []).append(timed(lambda s=side: s.run("down")))
    finally:
        for side in sides:
            side.run("down", check=False)
            side.run("destroy", "--yes", "--purge-models", check=False)
    out = {}
    for key in samples["base"]:
        b, n = statistics.median(samples["base"][key]), statistics.median(samples["new"][key])
        out[key] = {"base": round(b, 1), "new": round(n, 1), "ratio": round(n / b, 3)}
        print(f"{key:20s} base {b:8.1f}  new {n:8.1f}  ratio {n / b:5.2f}")
    print(json.dumps(out), file=sys.stderr)


if __name__ == "__main__":
    main()
