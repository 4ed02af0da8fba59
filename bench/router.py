"""Four roles of the real Gemma (contexts 1024-4096), served two ways in one run: four llama-server
processes (one runtime each, farmhand's default) and one llama-server router (`router: true`,
models_max 4). For each: `farmhand up` until every role's model is loaded and answers, and the
resident memory of everything farmhand started (RSS, summed over the processes). Each layout is
started and stopped three times, alternately; medians.

    .venv/bin/python bench/router.py        (needs .cache/wheels and .cache/models: make test)
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
from conftest import GEMMA, MODELS, WHEELHOUSE, home_processes, wait_for  # noqa: E402

ROLES = {"default": 4096, "fast": 1024, "mid": 2048, "long": 3072}
FH = [sys.executable, "-m", "supervisor"]


def layout(router: bool) -> dict:
    if router:
        runtimes = {"llama-server": None, "pool": {"backend": "llama-server", "router": True, "models_max": 4}}
        roles = {r: {"use": [{"model": "gemma3-270m", "runtime": "pool", "ctx_size": c}]} for r, c in ROLES.items()}
    else:
        runtimes = {"llama-server": None, **{f"ls-{r}": {"backend": "llama-server"} for r in ROLES}}
        roles = {r: {"use": [{"model": "gemma3-270m", "runtime": f"ls-{r}", "ctx_size": c}]} for r, c in ROLES.items()}
    return {"supervisor": {"port": 0}, "deployment": {"runtimes": runtimes, "roles": roles},
            "models": {"gemma3-270m": {"sources": [f"file://{MODELS / GEMMA['file']}"]}}}


class Side:
    def __init__(self, work: Path, router: bool):
        self.name = "router" if router else "4 processes"
        self.home = work / ("router" if router else "processes")
        self.env = os.environ | {"FARMHAND_HOME": str(self.home), "FARMHAND_WHEELHOUSE": str(WHEELHOUSE)}
        self.overrides = work / f"{self.home.name}.json"
        self.overrides.write_text(json.dumps(layout(router)))

    def run(self, *args: str) -> str:
        return subprocess.run([*FH, *args], env=self.env, cwd=self.home.parent, check=True, capture_output=True,
                              text=True).stdout

    def urls(self) -> dict[str, str]:
        roles = json.loads(self.run("status", "--json"))["roles"]
        return {r["role"]: r["url"] for r in roles}

    def up_until_all_answer(self) -> float:
        t0 = time.perf_counter()
        self.run("up")
        for role, url in self.urls().items():
            wait_for(lambda u=url, r=role: requests.post(f"{u}/chat/completions", timeout=120, json={
                "model": r, "max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}]}).status_code == 200,
                300, f"{role} to answer")
        return time.perf_counter() - t0

    def rss_mib(self) -> float:
        return sum(p.memory_info().rss for p in home_processes(self.home)) / 2**20


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="farmhand-bench-router-"))
    sides = [Side(work, False), Side(work, True)]
    got: dict[str, dict[str, list[float]]] = {s.name: {"up_s": [], "rss_mib": []} for s in sides}
    try:
        for side in sides:
            side.run("apply", "--yes", "--profile", "cpu-small", "--overrides", str(side.overrides))
            side.run("down")
        for _ in range(3):
            for side in sides:
                got[side.name]["up_s"].append(side.up_until_all_answer())
                got[side.name]["rss_mib"].append(side.rss_mib())
                side.run("down")
        out = {name: {k: round(statistics.median(v), 2) for k, v in m.items()} for name, m in got.items()}
        out["ratio router/processes"] = {k: round(out["router"][k] / out["4 processes"][k], 2)
                                         for k in ("up_s", "rss_mib")}
        print(json.dumps(out, indent=1))
    finally:
        for side in sides:
            subprocess.run([*FH, "destroy", "--yes", "--purge-models"], env=side.env, capture_output=True)


if __name__ == "__main__":
    main()
