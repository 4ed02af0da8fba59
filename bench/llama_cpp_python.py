"""Decode speed of llama-cpp-python's server against llama-server, same GGUF, same run: one
farmhand apply serves the real Gemma 3 270M from both (a role each), then the same completion
is streamed from each in turn, RUNS times, interleaved. Decode tok/s is measured by the client
from the first streamed token to the last, so prompt processing is left out for both.

    .venv/bin/python bench/llama_cpp_python.py        (BENCH_RUNS, default 7)

Needs .cache/wheels and .cache/models (make test builds and fetches them).
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

RUNS = int(os.environ.get("BENCH_RUNS", "7"))
TOKENS = 96
PROMPT = "The history of the printing press begins"


def decode_rate(url: str, model: str) -> float:
    """Tokens per second between the first and the last streamed token of a TOKENS-token reply."""
    stamps = []
    with requests.post(f"{url}/completions", stream=True, timeout=300, json={
            "model": model, "prompt": PROMPT, "max_tokens": TOKENS, "temperature": 0, "stream": True,
            "ignore_eos": True}) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if line.startswith(b"data: ") and line != b"data: [DONE]":
                if json.loads(line[6:])["choices"][0].get("text"):
                    stamps.append(time.perf_counter())
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="farmhand-bench-lcp-"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"} | {
        "FARMHAND_HOME": str(work / "home"), "FARMHAND_WHEELHOUSE": str(WHEELHOUSE)}
    overrides = work / "o.yaml"
    overrides.write_text(json.dumps({
        "supervisor": {"port": 0},
        "deployment": {"runtimes": {"llama-server": {"backend": "llama-server"}, "py": {"backend": "llama-cpp-python"}},
                       "roles": {"default": {"use": [{"model": "gemma3-270m", "runtime": "llama-server",
                                                      "ctx_size": 2048}]},
                                 "python": {"use": [{"model": "gemma3-270m", "runtime": "py", "ctx_size": 2048}]}}},
        "models": {"gemma3-270m": {"sources": [f"file://{MODELS / GEMMA['file']}"]}}}))
    fh = [sys.executable, "-m", "supervisor"]
    (work / "project").mkdir()
    try:
        out = subprocess.run([*fh, "apply", "--yes", "--json", "--profile", "cpu-small", "--overrides", str(overrides)],
                             env=env, cwd=work / "project", capture_output=True, text=True, timeout=3600)
        if out.returncode != 0:
            raise SystemExit(f"apply failed: {out.stderr[-2000:]}")
        roles = {r["role"]: r["url"] for r in json.loads(out.stdout)["roles"]}
        sides = {"llama-server": roles["default"], "llama-cpp-python": roles["python"]}
        for url in sides.values():
            decode_rate(url, "gemma3-270m")  # warm-up
        rates: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(RUNS):
            for name, url in sides.items():
                rates[name].append(decode_rate(url, "gemma3-270m"))
    finally:
        subprocess.run([*fh, "destroy", "--yes"], env=env, cwd=work / "project", capture_output=True)
    base, new = (statistics.median(rates[n]) for n in ("llama-server", "llama-cpp-python"))
    print(f"decode tok/s  llama-server {base:6.1f}  llama-cpp-python {new:6.1f}  ratio {new / base:5.2f}")
    print(json.dumps({"llama_server_tok_s": round(base, 1), "llama_cpp_python_tok_s": round(new, 1),
                      "ratio": round(new / base, 3), "runs": RUNS, "tokens": TOKENS}), file=sys.stderr)


if __name__ == "__main__":
    main()
