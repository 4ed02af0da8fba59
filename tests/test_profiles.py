"""Whole-host scenarios: facts -> profile, backend and model, for every hardware class."""

from __future__ import annotations

import copy
import json
import time

import pytest
from conftest import FIXTURES

from supervisor import profiles
from supervisor.facts import hostio, probes

GIB = 1024**3
PROFILES = profiles.load_profiles()


def host(ram_gib=32, system="Linux", arch="x86_64", gpus=(), npus=(), **os_extra) -> dict:
    return {"schema": 1, "os": {"system": system, "arch": arch, **os_extra},
            "cpu": {"model": "x", "logical_cores": 8, "isa": {"avx2": True}},
            "memory": {"total_bytes": int(ram_gib * GIB), "available_bytes": int(ram_gib * GIB)},
            "disk": {"free_bytes": 500 * GIB}, "gpus": list(gpus), "npus": list(npus), "notes": []}


def nvidia(name, vram_gib, driver="550.54.14"):
    return {"vendor": "nvidia", "name": name, "vram_bytes": int(vram_gib * GIB) if driver else None, "driver": driver}


def amd(name, vram_gib, gfx, rocm=True):
    return {"vendor": "amd", "name": name, "vram_bytes": int(vram_gib * GIB), "gfx_target": gfx, "rocm_supported": rocm}


def everything_reachable(model):
    return True, "reachable"


SCENARIOS = {
    "h100": (host(gpus=[nvidia("NVIDIA H100 80GB HBM3", 79.6)]), "nvidia-large", "vllm", "llama-3.1-8b-instruct"),
    "rtx4090": (host(gpus=[nvidia("RTX 4090", 24)]), "nvidia-mid", "ollama", "llama3.1-8b"),
    "two different nvidia": (host(gpus=[nvidia("RTX 3060", 12), nvidia("RTX 4090", 24)]), "nvidia-mid", "ollama",
                             "llama3.1-8b"),
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
                                gpus=[{"vendor": "apple", "name": "Apple M2 Max", "vram_bytes": 48 * GIB}]),
                           "apple", "ollama", "llama3.1-8b"),
    "apple 8 GB": (host(8, system="Darwin", arch="arm64",
                        gpus=[{"vendor": "apple", "name": "Apple M1", "vram_bytes": int(5.3 * GIB)}]),
                   "apple", "ollama", "llama3.2-3b"),
    "amd npu": (host(32, gpus=[amd("Radeon 890M", 4, "gfx1150")], npus=[{"vendor": "amd", "name": "XDNA2"}]),
                "amd-npu", "lemonade", "llama-3.2-3b-instruct-hybrid"),
    "amd npu without driver": (host(32, npus=[{"vendor": "amd", "name": "XDNA2", "note": "no NPU driver loaded"}]),
                               "cpu-large", "llama-server", "llama-3.2-3b-instruct"),
    "cpu 24 GB": (host(24), "cpu-large", "llama-server", "llama-3.2-3b-instruct"),
    "raspberry pi arm64 8 GB": (host(8, arch="arm64"), "cpu-small", "llama-server", "gemma3-270m"),
    "container without /sys": (host(4, container="docker"), "cpu-small", "llama-server", "gemma3-270m"),
}


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario(name):
    facts, want_profile, want_backend, want_model = SCENARIOS[name]
    match, _ = profiles.choose(PROFILES, facts)
    model, _skipped = profiles.choose_model(match.profile, facts, everything_reachable)
    assert (match.profile["name"], match.profile["backend"]["name"], model["name"]) == (
        want_profile, want_backend, want_model), match.summary()


def test_offline_host_ends_on_a_model_it_can_get():
    facts = host(24)
    match, _ = profiles.choose(PROFILES, facts)

    def offline(model):
        ok = any(s.startswith("pip://") for s in model["sources"])
        return ok, "reachable" if ok else "no source reachable (hf: name does not resolve (offline?))"

    model, skipped = profiles.choose_model(match.profile, facts, offline)
    assert model["name"] == "gemma3-270m"
    assert skipped == ["llama-3.2-3b-instruct: no source reachable (hf: name does not resolve (offline?))"]


def test_explain_names_the_first_failing_rule():
    _, matches = profiles.choose(PROFILES, host(24))
    why = {m.profile["name"]: (m.holds, m.summary()) for m in matches}
    assert why["nvidia-large"] == (False, "gpu_vendor: no nvidia GPU (GPUs: none)")
    assert why["cpu-large"][0] and "RAM 24.0 GiB" in why["cpu-large"][1]


def test_overrides_change_any_field_and_are_validated():
    profile = next(p for p in PROFILES if p["name"] == "cpu-small")
    merged = profiles.apply_overrides(profile, {"backend": {"port": 12000}}, "o.yaml")
    assert merged["backend"]["port"] == 12000 and merged["backend"]["name"] == "llama-server"
    with pytest.raises(Exception, match="port 8000 is reserved for LlamaFarm"):
        profiles.apply_overrides(profile, {"backend": {"port": 8000}}, "o.yaml")


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
def test_recorded_hosts(recording):
    directory = FIXTURES / "hosts" / recording
    expected = json.loads((directory / "expected.json").read_text())
    facts = probes.gather(hostio.ReplayHost(directory))
    match, _ = profiles.choose(PROFILES, facts)
    model, _ = profiles.choose_model(match.profile, facts, everything_reachable)
    assert {"profile": match.profile["name"], "backend": match.profile["backend"]["name"],
            "model": model["name"]} == expected
