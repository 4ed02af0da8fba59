"""No generation runs away (issue 18): the embedded Gemma is a base model, so a request without
max_tokens writes until its context is full. The "try it" command apply prints carries
max_tokens and returns in seconds; llama-server runs with --n-predict (the roles' reply cap), so
a client that leaves a long non-streaming request frees the slot: cancelled at once, or at the
cap. Both measured here, against the real llama-server and the real model."""

from __future__ import annotations

import json
import re
import shlex
import socket
import subprocess
import time

import pytest
import requests
from conftest import free_port, wait_for

from supervisor.deployment import default_max_tokens

CTX = 1024  # a small context: the cap is a quarter of it


@pytest.fixture
def served(farmhand, llama_wheel, tmp_path):
    port = free_port()
    o = tmp_path / "overrides.yaml"
    o.write_text(f"supervisor: {{port: 0}}\ndeployment:\n  roles:\n    default:\n"
                 f"      use: [{{model: gemma3-270m, runtime: llama-server, ctx_size: {CTX}}}]\n")
    proc = farmhand.run("apply", "--yes", "--port", str(port), "--overrides", str(o), timeout=1800, check=True)
    return port, proc.stdout


def _busy(port: int) -> bool:
    slots = requests.get(f"http://127.0.0.1:{port}/slots", timeout=5).json()
    return any(s.get("is_processing") for s in slots)


@pytest.mark.e2e
def test_the_try_it_command_returns_in_seconds_with_an_answer(served):
    port, shown = served
    m = re.search(r"try it:\n\s+(curl .*?)(?:\n\S|\Z)", shown, re.S)
    assert m, f"apply printed no try-it command:\n{shown}"
    command = m.group(1).replace("\\\n", " ")
    argv = shlex.split(command)
    assert '"max_tokens"' in argv[-1], f"the printed request is unbounded: {argv[-1]}"
    t0 = time.monotonic()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    seconds = time.monotonic() - t0
    assert out.returncode == 0, out.stderr
    reply = json.loads(out.stdout)
    content = reply["choices"][0]["message"]["content"]
    assert re.search(r"[A-Za-z]{3,}", content), f"not an answer: {content!r}"
    assert reply["usage"]["completion_tokens"] <= 64, reply["usage"]
    print(f"\ntry it: {seconds:.1f}s, {reply['usage']['completion_tokens']} tokens")
    assert seconds < 60, f"the try-it command took {seconds:.0f}s"


@pytest.mark.e2e
def test_a_client_that_leaves_frees_the_slot(served):
    """A raw non-streaming request with no max_tokens, the client gone after the first tokens:
    the slot is free again within seconds (cancelled) or by the time the cap allows."""
    port, _ = served
    cap = default_max_tokens(CTX)
    # The decode rate, so the bound is measured, not assumed.
    t0 = time.monotonic()
    timing = requests.post(f"http://127.0.0.1:{port}/v1/completions", timeout=120, json={
        "model": "gemma3-270m", "prompt": "Once upon a time", "max_tokens": 32, "temperature": 0}).json()
    rate = timing["usage"]["completion_tokens"] / (time.monotonic() - t0)

    body = json.dumps({"model": "gemma3-270m", "prompt": "Once upon a time", "temperature": 0}).encode()
    client = socket.create_connection(("127.0.0.1", port), timeout=10)
    client.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                   + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    wait_for(lambda: _busy(port), timeout=30, what="the slot to start generating")
    client.close()
    left = time.monotonic()
    bound = max(5.0, 2 * cap / rate)
    wait_for(lambda: not _busy(port), timeout=bound + 30, what="the slot to be free after the client left")
    freed = time.monotonic() - left
    print(f"\nclient left: slot free after {freed:.1f}s (decode {rate:.0f} tok/s, cap {cap} tokens, bound {bound:.0f}s)")
    assert freed <= bound, f"the slot stayed busy {freed:.0f}s after the client left (bound {bound:.0f}s)"
    # The server answers the next client at once.
    t0 = time.monotonic()
    requests.post(f"http://127.0.0.1:{port}/v1/completions", timeout=60, json={
        "model": "gemma3-270m", "prompt": "Monday, Tuesday,", "max_tokens": 4})
    assert time.monotonic() - t0 < 30
