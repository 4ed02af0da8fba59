"""GGUF headers and the memory estimate built on them: the real Gemma header (cross-checked with
llama.cpp's own `gguf` reader), synthetic files for the shapes Gemma does not have, remote
headers over HTTP Range, and the estimate against the real llama-server process."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import gguf as llamacpp_gguf
import numpy as np
import psutil
import pytest
import requests
from conftest import free_port, wait_for

from supervisor import gguf
from supervisor.deployment import ModelSpec
from supervisor.memory import DevicePool, Estimate, devices_from_facts, estimate

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent / "fakes"))
from file_server import FileServer  # noqa: E402

GEMMA = ModelSpec(name="gemma3-270m", size_bytes=253113024, sources=("pip://x",), file="gemma-3-270m-q4_k_m.gguf")


def test_the_real_gemma_header(gemma_gguf):
    info = gguf.read_file(gemma_gguf)
    assert (info.version, info.architecture, info.block_count, info.head_count, info.head_count_kv,
            info.key_length, info.value_length, info.embedding_length, info.context_length,
            info.sliding_window, info.vocab_size, info.has_chat_template) == (
        3, "gemma3", 18, 4, (1,), 256, 256, 640, 32768, 512, 262144, False)
    assert info.kv_bytes_per_token() == 18 * 1 * (256 + 256) * 2
    assert 6_000_000 < info.metadata_bytes < 6_525_120  # ends before the tensor infos


def test_agrees_with_llama_cpps_own_reader(gemma_gguf):
    ref = llamacpp_gguf.GGUFReader(str(gemma_gguf))
    info = gguf.read_file(gemma_gguf)

    def field(name):
        return ref.fields[name].contents()

    assert info.architecture == field("general.architecture")
    assert info.block_count == field("gemma3.block_count")
    assert info.head_count_kv == (field("gemma3.attention.head_count_kv"),)
    assert info.key_length == field("gemma3.attention.key_length")
    assert info.vocab_size == len(ref.fields["tokenizer.ggml.tokens"].data)
    assert ("tokenizer.chat_template" in ref.fields) == info.has_chat_template


def write_gguf(path, kv_heads, template=None, tokens=("a", "b")):
    writer = llamacpp_gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(len(kv_heads) if isinstance(kv_heads, list) else 4)
    writer.add_context_length(4096)
    writer.add_embedding_length(256)
    writer.add_head_count(8)
    writer.add_head_count_kv(kv_heads)
    if template:
        writer.add_chat_template(template)
    writer.add_token_list(list(tokens))
    writer.add_tensor("t", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_per_layer_kv_heads_and_a_chat_template(tmp_path):
    info = gguf.read_file(write_gguf(tmp_path / "m.gguf", [2, 2, 4, 4], template="{{ messages }}"))
    assert info.head_count_kv == (2, 2, 4, 4) and info.has_chat_template
    head = 256 // 8
    assert info.kv_bytes_per_token() == (2 + 2 + 4 + 4) * (head + head) * 2


@pytest.mark.parametrize("damage, message", [
    (lambda b: b"GGML" + b[4:], "not a GGUF file"),
    (lambda b: b[:4] + (9).to_bytes(4, "little") + b[8:], "unsupported GGUF version 9"),
    (lambda b: b[:200], "the file ends (200 bytes) inside its GGUF metadata"),
])
def test_bad_files_are_named_errors(tmp_path, damage, message):
    good = write_gguf(tmp_path / "m.gguf", 4, tokens=[f"t{i}" for i in range(50)]).read_bytes()
    (tmp_path / "bad.gguf").write_bytes(damage(good))
    with pytest.raises(gguf.GGUFError, match=re.escape(message)):
        gguf.read_file(tmp_path / "bad.gguf")


@pytest.mark.parametrize("ranges", [True, False], ids=["server honours Range", "server ignores Range"])
def test_a_remote_header_costs_a_few_mb_not_the_file(gemma_gguf, tmp_path, ranges):
    os.link(gemma_gguf, tmp_path / "gemma.gguf")
    with FileServer(tmp_path, ranges=ranges) as server:
        info = gguf.read_url(server.url("gemma.gguf"))
        assert info.architecture == "gemma3" and info.block_count == 18
        assert [r[2] for r in server.requests] == ["bytes=0-4194303", "bytes=0-16777215"]
        if ranges:  # the 6.5 MB header took two windows: 4 MiB, then 16 MiB
            assert server.bytes_sent == 4194304 + 16777216
    # (A server that ignores Range starts sending the whole file; the reader stops after n bytes.)


def test_the_estimate_from_the_real_header(gemma_gguf):
    info = gguf.read_file(gemma_gguf)
    est = estimate(GEMMA, info, 8192)
    assert (est.weights, est.kv) == (253113024, 18432 * 8192)
    assert est.overhead == 128 * 2**20 + int(253113024 * 0.08)
    assert est.basis == "GGUF header: gemma3, 18 layers, 1 KV heads, 18432 B/token"
    fallback = estimate(GEMMA, None, 8192)
    assert fallback.total == int(253113024 * 1.25) and "no GGUF header" in fallback.basis


@pytest.mark.e2e
def test_the_estimate_bounds_the_real_process(gemma_gguf, llama_server_binary):
    """llama-server with the real model: the estimate is an upper bound of its memory, and not a
    wild one (within 2x), at a small and a large context."""
    info = gguf.read_file(gemma_gguf)
    for ctx in (1024, 8192):
        port = free_port()
        proc = subprocess.Popen([str(llama_server_binary), "-m", str(gemma_gguf), "--host", "127.0.0.1",
                                 "--port", str(port), "-c", str(ctx)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda port=port: _ok(f"http://127.0.0.1:{port}/health"), timeout=60, what="llama-server ready")
            rss = psutil.Process(proc.pid).memory_info().rss
        finally:
            proc.terminate()
            proc.wait(30)
        est = estimate(GEMMA, info, ctx).total
        assert rss <= est <= 2 * rss, (ctx, rss, est)


def _ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


GIB = 1024**3


def test_devices_from_facts_budgets():
    facts = {"memory": {"total_bytes": 32 * GIB},
             "gpus": [{"vendor": "nvidia", "index": 0, "name": "RTX 4090", "vram_bytes": 24 * GIB},
                      {"vendor": "intel", "name": "Arc", "vram_bytes": None},
                      {"vendor": "apple", "name": "M2", "vram_bytes": 48 * GIB, "unified_memory": True}]}
    devices = {d.id: (d.budget_bytes, d.budget_note) for d in devices_from_facts(facts, {"gpu_fraction": 0.8})}
    assert devices == {"gpu0": (int(24 * GIB * 0.8), "80% of 24.0 GiB VRAM"), "gpu1": (None, "VRAM unknown"),
                       "gpu2": (48 * GIB, "Metal working set of unified memory"),
                       "ram": (int(32 * GIB * 0.7), "70% of 32.0 GiB RAM")}


def need(gib_: float) -> Estimate:
    return Estimate(int(gib_ * GIB), 0, 0, "test")


@pytest.mark.parametrize("gpus, variant, split, sizes, expected", [
    # one GPU each while they fit, the emptiest first
    ([24, 24], "cuda", "layer", [10, 10], [("gpu0",), ("gpu1",)]),
    # too big for one: layer split over both in proportion to what is free
    ([12, 12], "cuda", "layer", [16], [("gpu0", "gpu1")]),
    # tensor parallelism only over a power of two GPUs
    ([80, 80, 80], "cuda", "tensor", [100], [("gpu0", "gpu1")]),
    # a backend that cannot split: too big for any one GPU does not fit
    ([12, 12], "cuda", None, [16], ["needs 16.0 GiB"]),
    # ROCm skips an AMD GPU without a supported gfx target
    (None, "rocm", "layer", [4], [("gpu1",)]),
    # a CPU runtime lives in RAM
    ([24], "cpu", "layer", [4], [("ram",)]),
])
def test_placement(gpus, variant, split, sizes, expected):
    if gpus is None:
        facts_gpus = [{"vendor": "amd", "name": "780M", "vram_bytes": 2 * GIB, "rocm_supported": False},
                      {"vendor": "amd", "name": "7900 XTX", "vram_bytes": 24 * GIB, "rocm_supported": True}]
    else:
        facts_gpus = [{"vendor": "nvidia", "index": i, "name": f"G{i}", "vram_bytes": v * GIB} for i, v in enumerate(gpus)]
    pool = DevicePool(devices_from_facts({"memory": {"total_bytes": 64 * GIB}, "gpus": facts_gpus}))
    got = []
    for size in sizes:
        placement = pool.place(variant, "auto", split, need(size))
        if isinstance(placement, str):
            got.append(placement.split(";")[0].split(" (")[0])
            continue
        pool.commit(placement, f"m{size}", need(size))
        got.append(placement.devices)
    assert got == expected
