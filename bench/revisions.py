"""The commands users wait on, timed for two checkouts of farmhand in the same run, interleaved
and taking turns to go first (so machine load, and whatever the other side's last command left
running, falls on both alike): a no-op `./bootstrap.py`, `status`, `up` and `down`.
Each checkout runs with its own .venv.

Prints, per command, each side's median wall time and CPU time (user + system of the command's
own process and what it waited for: for `up`, the client, not the detached supervisor), the
ratio NEW / BASE of the medians, and the median of the paired ratios (run i of NEW over run i of
BASE, taken back to back) with a bootstrap 90% interval. On a shared machine single runs vary by
+-20%, and two runs of this bench disagree by several percent on the same code.

So, where valgrind is installed, each command then runs once more per side under
`valgrind --tool=callgrind` with PYTHONHASHSEED=0, and the instructions it executed are
counted: the same code gives the same count to within 1% (`up` and `down` poll while they wait;
`status` and a no-op bootstrap repeat exactly), whatever else the machine is doing.
That ratio is the "no slower" verdict; the times say what a user waits. (A no-op bootstrap counts
its exec'd farmhand and the probes it runs; `up` and `down` count the client, not the
supervisor it starts or stops.) BENCH_INSTRUCTIONS=0 skips it (about two minutes).

    .venv/bin/python bench/revisions.py BASE_CHECKOUT [NEW_CHECKOUT]   (NEW: this one)

Needs .cache/wheels and .cache/models here (make test builds and fetches them).
"""

from __future__ import annotations

import glob
import json
import os
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from conftest import FAKE, GEMMA, MODELS, WHEELHOUSE, free_port  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", "11"))


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

    def bootstrap_argv(self) -> list[str]:
        return [self.python, str(self.root / "bootstrap.py"), "--profile", "cpu-small", "--port", str(self.port),
                "--overrides", str(self.overrides)]

    def bootstrap(self) -> None:
        subprocess.run(self.bootstrap_argv(), env=self.env, cwd=self.project, capture_output=True, check=True)

    def instructions(self, argv: list[str], children: bool = False) -> int:
        """Instructions `argv` executed under callgrind (its children's too when `children`)."""
        logs = Path(tempfile.mkdtemp(prefix="farmhand-bench-callgrind-"))
        try:
            subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                            f"--log-file={logs}/%p.log", f"--trace-children={'yes' if children else 'no'}", *argv],
                           env=self.env | {"PYTHONHASHSEED": "0"}, cwd=self.project, capture_output=True, check=True)
            counts = [re.search(r"Collected : (\d+)", Path(f).read_text()) for f in glob.glob(f"{logs}/*.log")]
            return sum(int(m.group(1)) for m in counts if m)
        finally:
            shutil.rmtree(logs, ignore_errors=True)


def timed(fn) -> tuple[float, float]:
    """(wall ms, CPU ms of the processes this one waited for) of one call."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    fn()
    wall = (time.perf_counter() - t0) * 1000
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) * 1000


def paired_ratio(base: list[float], new: list[float], resamples: int = 2000) -> tuple[float, float, float]:
    """(median, 5th, 95th percentile of the bootstrapped median) of new[i] / base[i]."""
    ratios = [n / b for b, n in zip(base, new)]
    rng = random.Random(17)  # the same interval for the same samples
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(resamples))
    return statistics.median(ratios), medians[int(0.05 * resamples)], medians[int(0.95 * resamples) - 1]


def record(samples: dict[str, list], key: str, sample: tuple[float, float]) -> None:
    samples.setdefault(key, []).append(sample)


def main() -> None:
    base = Path(sys.argv[1]).resolve()
    new = Path(sys.argv[2]).resolve() if len(sys.argv) > 2 else REPO
    work = Path(tempfile.mkdtemp(prefix="farmhand-bench-revisions-"))
    sides = [Checkout(base, work, "base"), Checkout(new, work, "new")]
    samples: dict[str, dict[str, list[float]]] = {s.label: {} for s in sides}
    counted: dict[str, dict[str, int]] = {}
    try:
        for side in sides:  # the first apply, then one warm-up run (bytecode written)
            side.run("apply", "--yes", "--profile", "cpu-small", "--port", str(side.port), "--overrides",
                     str(side.overrides))
            side.bootstrap()
        for i in range(RUNS):
            for side in sides if i % 2 == 0 else sides[::-1]:  # who goes first alternates: no position bias
                got = samples[side.label]
                record(got, "noop_bootstrap", timed(side.bootstrap))
                record(got, "status", timed(lambda s=side: s.run("status")))
                record(got, "down", timed(lambda s=side: s.run("down")))
                record(got, "up", timed(lambda s=side: s.run("up")))
        if os.environ.get("BENCH_INSTRUCTIONS", "1") != "0" and shutil.which("valgrind"):
            for side in sides:  # the same order as timed: a running deployment, bootstrap, status, down, up
                counted[side.label] = {
                    "noop_bootstrap": side.instructions(side.bootstrap_argv(), children=True),
                    "status": side.instructions([side.python, "-m", "supervisor", "status"]),
                    "down": side.instructions([side.python, "-m", "supervisor", "down"]),
                    "up": side.instructions([side.python, "-m", "supervisor", "up"])}
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
                record(got, "up_fake", timed(lambda s=side: s.run("up")))
                record(got, "down_fake", timed(lambda s=side: s.run("down")))
    finally:
        for side in sides:
            side.run("down", check=False)
            side.run("destroy", "--yes", "--purge-models", check=False)
    out = {}
    print(f"{'command':16s} {'wall base':>10s} {'new':>8s} {'ratio':>6s}  {'paired [90%]':>20s}   "
          f"{'cpu base':>9s} {'new':>8s} {'ratio':>6s}")
    for key in samples["base"]:
        row = {}
        for i, what in enumerate(("wall", "cpu")):
            b = [x[i] for x in samples["base"][key]]
            n = [x[i] for x in samples["new"][key]]
            mid, lo, hi = paired_ratio(b, n)
            row[what] = {"base_ms": round(statistics.median(b), 1), "new_ms": round(statistics.median(n), 1),
                         "ratio": round(statistics.median(n) / statistics.median(b), 3),
                         "paired_ratio": round(mid, 3), "paired_90": [round(lo, 3), round(hi, 3)]}
        out[key] = row
        w, c = row["wall"], row["cpu"]
        print(f"{key:16s} {w['base_ms']:10.1f} {w['new_ms']:8.1f} {w['ratio']:6.2f}  "
              f"{w['paired_ratio']:6.2f} [{w['paired_90'][0]:.2f}, {w['paired_90'][1]:.2f}]   "
              f"{c['base_ms']:9.1f} {c['new_ms']:8.1f} {c['ratio']:6.2f}")
    if counted:
        print(f"\n{'command':16s} {'instructions base':>18s} {'new':>10s} {'ratio':>6s}   (valgrind, deterministic)")
        for key, base_n in counted["base"].items():
            new_n = counted["new"][key]
            out[key]["instructions"] = {"base": base_n, "new": new_n, "ratio": round(new_n / base_n, 4)}
            print(f"{key:16s} {base_n / 1e6:17.1f}M {new_n / 1e6:9.1f}M {new_n / base_n:6.3f}")
    print(json.dumps({"runs": RUNS, "commands": out}), file=sys.stderr)


if __name__ == "__main__":
    main()
