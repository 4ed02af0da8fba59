"""CPU levels (supervisor/cpulevel.py): which level a CPU runs, which a build targets, which
llama.cpp options build exactly that, and why a CPU cannot run a build. Pure, table-driven; the
proof that a build runs where it claims is the QEMU test in test_bundle.py."""

from __future__ import annotations

import pytest
from conftest import FIXTURES, llama_install_spec

from supervisor import cpulevel
from supervisor.deployment import RuntimeDecl

EPYC = cpulevel.read_cpuinfo_flags((FIXTURES / "cpuinfo" / "epyc-x86-64-v4.txt").read_text())  # this CI host, real
HASWELL = ["sse4_2", "ssse3", "popcnt", "cx16", "avx", "avx2", "bmi1", "bmi2", "fma", "f16c", "movbe"]
NEHALEM = ["sse4_2", "ssse3", "popcnt", "cx16"]
PI5 = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp".split()

LEVELS = {
    # case: (arch, flags, wanted) -> (host level, build level)
    "EPYC with AVX-512: runs v4, builds v3 (the fleet's level)": ("x86_64", EPYC, "auto", "x86-64-v4", "x86-64-v3"),
    "Haswell: v3 both": ("x86_64", HASWELL, "auto", "x86-64-v3", "x86-64-v3"),
    "Nehalem: v2 both": ("x86_64", NEHALEM, "auto", "x86-64-v2", "x86-64-v2"),
    "AVX-512 asked for": ("x86_64", EPYC, "x86-64-v4", "x86-64-v4", "x86-64-v4"),
    "native asked for": ("x86_64", EPYC, "native", "x86-64-v4", "native"),
    "a CPU below v2 (or flags not recorded): native": ("x86_64", ["sse", "avx2"], "auto", None, "native"),
    "Raspberry Pi 5 (Cortex-A76): armv8.2-a": ("arm64", PI5, "auto", "armv8.2-a", "armv8.2-a"),
    "arm64 without dotprod: armv8-a": ("arm64", ["fp", "asimd"], "auto", "armv8-a", "armv8-a"),
    "macOS (no named level): native": ("arm64", [], "auto", None, "native"),
}


@pytest.mark.parametrize("case", LEVELS)
def test_levels(case):
    arch, flags, wanted, host, build = LEVELS[case]
    assert cpulevel.host_level(arch, flags) == host
    assert cpulevel.build_level(arch, flags, wanted) == build


@pytest.mark.parametrize("level, on, off", [
    ("x86-64-v2", ["-DGGML_SSE42=ON"], ["-DGGML_AVX=OFF", "-DGGML_AVX2=OFF", "-DGGML_FMA=OFF", "-DGGML_AVX512=OFF"]),
    ("x86-64-v3", ["-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON", "-DGGML_BMI2=ON"], ["-DGGML_AVX512=OFF"]),
    ("x86-64-v4", ["-DGGML_AVX2=ON", "-DGGML_AVX512=ON"], []),
    ("armv8.2-a", ["-DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod+fp16"], []),
])
def test_a_named_level_is_never_a_native_build(level, on, off):
    args = cpulevel.cmake_args(level)
    assert args[0] == "-DGGML_NATIVE=OFF"
    assert set(on) <= set(args) and set(off) <= set(args)
    assert cpulevel.cmake_args("native") == []


@pytest.mark.parametrize("level, arch, flags, why", [
    ("x86-64-v3", "x86_64", EPYC, None),
    ("x86-64-v4", "x86_64", HASWELL, "it was built for x86-64-v4, and this CPU lacks avx512f, avx512bw, avx512cd, "
                                     "avx512dq, avx512vl"),
    ("x86-64-v3", "x86_64", NEHALEM, "it was built for x86-64-v3, and this CPU lacks avx, avx2, bmi1, bmi2, fma, "
                                     "f16c, movbe"),
    ("x86-64-v3", "arm64", PI5, "it was built for x86_64 (x86-64-v3); this host is arm64"),
    ("armv8.2-a", "arm64", ["fp", "asimd"], "it was built for armv8.2-a, and this CPU lacks asimddp, fphp, asimdhp"),
    ("x86-64-v9", "x86_64", EPYC, "unknown CPU level 'x86-64-v9'"),
])
def test_why_a_cpu_cannot_run_a_build(level, arch, flags, why):
    got = cpulevel.missing(level, arch, flags)
    assert (got is None) if why is None else why in got, got


def test_the_install_key_follows_the_level_so_builds_never_mix():
    facts = {"os": {"arch": "x86_64"}, "cpu": {"level_flags": EPYC}}
    auto = llama_install_spec("cpu", facts)
    from supervisor.backends import get_backend

    v4 = get_backend("llama-server").install_spec(
        RuntimeDecl("llama-server", "llama-server", "cpu", {"method": "pip", "cpu_level": "x86-64-v4"}), facts)
    pinned = get_backend("llama-server").install_spec(
        RuntimeDecl("llama-server", "llama-server", "cpu", {"method": "pip"}), facts | {"build": {"cpu_level": "x86-64-v4"}})
    assert auto.get("cpu_level") == "x86-64-v3" and "-DGGML_AVX512=OFF" in auto.get("build_env")["CMAKE_ARGS"]
    assert v4.get("cpu_level") == "x86-64-v4" and "-DGGML_AVX512=ON" in v4.get("build_env")["CMAKE_ARGS"]
    assert auto.key != v4.key and v4.key == pinned.key  # a bundle's level pins the same build


@pytest.mark.parametrize("facts, why", [
    ({"os": {"arch": "x86_64"}, "cpu": {"level_flags": EPYC}, "gpus": [{"vendor": "nvidia"}]}, None),
    ({"os": {"arch": "x86_64"}, "cpu": {"level_flags": EPYC}, "gpus": []},
     "it holds a cuda build, and this host has no nvidia GPU"),
    ({"os": {"arch": "x86_64"}, "cpu": {"level_flags": HASWELL}, "gpus": [{"vendor": "amd"}]},
     "this CPU lacks avx512f"),
])
def test_a_bundle_fits_a_host_by_level_and_gpu_vendor(facts, why):
    import sys

    from supervisor.bundle import BuiltFor, _problem

    built = BuiltFor("x86_64", "x86-64-v4", [], ["cuda"], f"{sys.version_info[0]}.{sys.version_info[1]}", "0.1.0")
    got = _problem(built, facts)
    assert (got is None) if why is None else why in got, got


@pytest.mark.skipif(__import__("platform").machine() != "x86_64", reason="the recording is arm64; this must not be")
def test_bundle_create_refuses_a_target_of_another_architecture(tmp_path):
    import os
    import subprocess
    import sys

    from conftest import FIXTURES

    proc = subprocess.run([sys.executable, "-m", "supervisor", "bundle", "create", str(tmp_path / "b.tar"), "--replay",
                           str(FIXTURES / "hosts" / "raspberry-pi5-8g-container"), "--profile", "cpu-small"],
                          capture_output=True, text=True, timeout=120, env=os.environ | {"FARMHAND_HOME": str(tmp_path / "h")})
    assert proc.returncode == 5 and "the target is arm64 and this machine is x86_64" in proc.stderr, proc.stderr
    assert not (tmp_path / "b.tar").exists()


def test_a_bundles_level_stays_the_homes_level_for_later_plans(tmp_path):
    """After apply --bundle with an x86-64-v4 build, a plain plan must keep that build (not plan a
    v3 rebuild): the ledger keeps the level."""
    import json
    import os
    import subprocess
    import sys

    home = tmp_path / "home"
    env = os.environ | {"FARMHAND_HOME": str(home)}

    def install_step() -> str:
        out = subprocess.run([sys.executable, "-m", "supervisor", "plan", "--json", "--profile", "cpu-small"],
                             capture_output=True, text=True, env=env, timeout=120)
        assert out.returncode == 0, out.stderr
        return next(s["detail"] for s in json.loads(out.stdout)["steps"] if s["id"].startswith("install:"))

    assert "x86-64-v4" not in install_step()
    from supervisor.ledger import Ledger
    from supervisor.paths import Paths

    paths = Paths(home / "data", home / "state", home / "config", home / "cache", "home")
    (home / "state").mkdir(parents=True, exist_ok=True)
    ledger = Ledger(paths)
    ledger.data["build"] = {"cpu_level": "x86-64-v4"}
    ledger.save()
    assert "x86-64-v4" in install_step()
