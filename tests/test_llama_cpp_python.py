"""End to end, real: farmhand builds PyPI's llama-cpp-python from source through its own pip path
(the shared wheelhouse: once per checkout), serves the real Gemma 3 270M GGUF with
`llama_cpp.server`, and passes the same answer checks as llama-server: the chat prompt is
Gemma's own turn format, the answer is words and not template tokens, the weights compute. CORS
stays closed to a foreign origin; the role's reply cap holds; a re-run changes nothing; down and destroy leave nothing."""

from __future__ import annotations

import os
import threading
import time

import psutil
import pytest
import requests
import yaml
from checks import assert_real_gemma_replies, files_under, listening_ports
from conftest import home_processes, pid_gone

from supervisor.backends import get_backend
from supervisor.backends.base import InstallRejected

pytestmark = pytest.mark.e2e
GEMMA_CHAT = "<start_of_turn>user\nName one colour.<end_of_turn>\n<start_of_turn>model\n"


def test_llama_cpp_python_serves_the_real_model(farmhand, gemma_gguf, tmp_path):
    overrides = {
        "supervisor": {"port": 0, "grace_s": 5},
        "deployment": {"runtimes": {"llama-server": None, "py": {"backend": "llama-cpp-python"}},
                       "roles": {"default": {"use": [{"model": "gemma3-270m", "runtime": "py", "ctx_size": 2048}],
                                             "model_api_parameters": {"max_tokens": 24}}}},
        "models": {"gemma3-270m": {"sources": [f"file://{gemma_gguf}"]}},
    }
    (tmp_path / "o.yaml").write_text(yaml.safe_dump(overrides, sort_keys=False))
    ports_before = listening_ports()
    tmp_before = set(os.listdir("/tmp"))

    summary = farmhand.json("apply", "--yes", "--profile", "cpu-small", "--overrides", str(tmp_path / "o.yaml"),
                            timeout=2400)
    (runtime,) = summary["runtimes"]
    assert (runtime["name"], runtime["backend"], runtime["version"]) == ("py", "llama-cpp-python", "0.3.36")
    venvs = list((farmhand.home / "data" / "backends" / "llama-cpp-python").glob("*/venv"))
    assert venvs and all(v.stat().st_mode & 0o077 == 0 for v in venvs), [oct(v.stat().st_mode) for v in venvs]
    url = summary["url"]
    base = url.removesuffix("/v1")
    # Its install check: this CPU build loads, and would be refused as a GPU build (it cannot offload).
    backend, python = get_backend("llama-cpp-python"), venvs[0] / "bin" / "python"
    assert backend.verify_install(python, "cpu") is None
    with pytest.raises(InstallRejected, match="cannot offload to a GPU"):
        backend.verify_install(python, "cuda")

    # The same checks as llama-server's answers, and the prompt in Gemma's turn format: the chat
    # request's prompt is exactly as many tokens as Gemma's format makes (ChatML or llama-2 differ).
    assert_real_gemma_replies(url, "gemma3-270m")
    expected = requests.post(f"{base}/extras/tokenize/count", json={"input": GEMMA_CHAT}, timeout=30).json()["count"]
    reply = requests.post(f"{url}/chat/completions", timeout=120, json={
        "model": "gemma3-270m", "max_tokens": 4, "temperature": 0,
        "messages": [{"role": "user", "content": "Name one colour."}]}).json()
    assert reply["usage"]["prompt_tokens"] == expected, (reply["usage"], expected)

    # The role's reply cap holds for a request that asks for more, or for nothing (llama-server's --n-predict).
    # A chat request without max_tokens would otherwise run to the end of the context.
    for path, body in (("chat/completions", {"messages": [{"role": "user", "content": "Tell me a long story."}]}),
                       ("completions", {"prompt": "Once upon a time", "max_tokens": 1000})):
        capped = requests.post(f"{url}/{path}", timeout=120, json={"model": "gemma3-270m", "temperature": 0,
                                                                   **body}).json()
        assert capped["usage"]["completion_tokens"] <= 24, (path, capped["usage"])

    # Liveness while a long reply is written: its own routes wait for the model; the shim's /health does not.
    long = threading.Thread(target=lambda: requests.post(f"{url}/chat/completions", timeout=120, json={
        "model": "gemma3-270m", "temperature": 0, "messages": [{"role": "user", "content": "Tell me a story."}]}))
    long.start()
    during = []
    try:
        while long.is_alive():
            during.append(requests.get(f"{base}/health", timeout=1).status_code)
            time.sleep(0.05)
    finally:
        long.join()
    assert during and set(during) == {200}, during

    # CORS: a foreign origin gets no allow header (the server alone would allow every origin).
    pre = requests.options(f"{url}/chat/completions", timeout=10, headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in {k.lower() for k in pre.headers}, dict(pre.headers)
    got = requests.get(f"{url}/models", headers={"Origin": "https://evil.example"}, timeout=10)
    assert got.status_code == 200 and "access-control-allow-origin" not in {k.lower() for k in got.headers}

    again = farmhand.json("apply", "--yes", "--profile", "cpu-small", "--overrides", str(tmp_path / "o.yaml"))
    assert again["changed"] is False, [s for s in again["steps"] if s["changed"]]
    (rt,) = farmhand.json("status")["runtimes"]
    assert rt["state"] == "ready" and "python" in psutil.Process(rt["pid"]).name()

    farmhand.run("down", check=True)
    assert pid_gone(rt["pid"]) and not home_processes(farmhand.home)
    assert listening_ports() <= ports_before
    farmhand.run("destroy", "--yes", check=True)
    assert files_under(farmhand.home) <= {"data", "data/models", "data/models/gemma-3-270m-q4_k_m.gguf",
                                          "data/models/store.json"}
    assert set(os.listdir("/tmp")) - tmp_before == set()
