"""CPU levels: the instruction sets a native build may assume, named, so a build runs where it says.

llama.cpp's default build is `-march=native`: compiled on an AVX-512 machine it dies with SIGILL
on an AVX2 one. farmhand builds for a named level instead (x86-64-v2/v3/v4, the psABI levels;
armv8-a/armv8.2-a) and records it with the install; a bundle carries it, and a host is checked
against it before anything is installed. By default a build targets the host's level capped at
x86-64-v3 (armv8.2-a), the level of every x86 server CPU since 2015: one build, and one bundle,
then serves a mixed fleet. AVX-512 (x86-64-v4) or `native` is a choice (`install.cpu_level`).

Standard library only: bootstrap.py checks a bundle with it before any venv exists.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Level:
    """A CPU level builds target: the CPU flags it assumes and the llama.cpp options for it."""

    name: str
    arch: str
    flags: tuple[str, ...]  # /proc/cpuinfo names the host must list (x86 "flags", arm64 "Features")
    cmake: tuple[str, ...]  # llama.cpp's options that build for exactly this level


_V2 = ("sse4_2", "ssse3", "popcnt", "cx16")
_V3 = _V2 + ("avx", "avx2", "bmi1", "bmi2", "fma", "f16c", "movbe")
_V4 = _V3 + ("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl")
_NO_X86 = ("-DGGML_AVX=OFF", "-DGGML_AVX2=OFF", "-DGGML_BMI2=OFF", "-DGGML_FMA=OFF", "-DGGML_F16C=OFF")
_X86_V3 = ("-DGGML_NATIVE=OFF", "-DGGML_SSE42=ON", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_BMI2=ON",
           "-DGGML_FMA=ON", "-DGGML_F16C=ON")

LEVELS: dict[str, Level] = {lv.name: lv for lv in (
    Level("x86-64-v2", "x86_64", _V2, ("-DGGML_NATIVE=OFF", "-DGGML_SSE42=ON", *_NO_X86, "-DGGML_AVX512=OFF")),
    Level("x86-64-v3", "x86_64", _V3, (*_X86_V3, "-DGGML_AVX512=OFF")),
    Level("x86-64-v4", "x86_64", _V4, (*_X86_V3, "-DGGML_AVX512=ON")),
    Level("armv8-a", "arm64", ("asimd",), ("-DGGML_NATIVE=OFF", "-DGGML_CPU_ARM_ARCH=armv8-a")),
    Level("armv8.2-a", "arm64", ("asimd", "asimddp", "fphp", "asimdhp"),
          ("-DGGML_NATIVE=OFF", "-DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod+fp16")),
)}
DEFAULT_CAP = {"x86_64": "x86-64-v3", "arm64": "armv8.2-a"}
NATIVE = "native"  # this CPU exactly: fastest here, runs only on CPUs like it
CHOICES = ("auto", *LEVELS, NATIVE)


def norm_arch(machine: str) -> str:
    """platform.machine()'s spellings -> the one farmhand uses (x86_64, arm64)."""
    machine = (machine or "").lower()
    return {"amd64": "x86_64", "aarch64": "arm64"}.get(machine, machine)


def levels_of(arch: str) -> list[Level]:
    return [lv for lv in LEVELS.values() if lv.arch == arch]


def host_level(arch: str, flags: list[str] | set[str]) -> str | None:
    """The highest named level a CPU with `flags` runs (None: an arch or CPU below every level)."""
    have = set(flags)
    best = None
    for lv in levels_of(arch):
        if have.issuperset(lv.flags):
            best = lv.name
    return best


def build_level(arch: str, flags: list[str] | set[str], wanted: str = "auto") -> str:
    """The level a build on this host targets: `wanted`, or for auto the host's capped at the default."""
    if wanted != "auto":
        return wanted
    here = host_level(arch, flags)
    cap = DEFAULT_CAP.get(arch)
    if here is None or cap is None:
        return NATIVE  # macOS, other arches: the toolchain's own target
    order = [lv.name for lv in levels_of(arch)]
    return order[min(order.index(here), order.index(cap))]


def cmake_args(level: str) -> list[str]:
    return list(LEVELS[level].cmake) if level in LEVELS else []


def missing(level: str, arch: str, flags: list[str] | set[str]) -> str | None:
    """Why a CPU (`arch`, `flags`) cannot run a build for `level`, or None when it can."""
    lv = LEVELS.get(level)
    if lv is None:
        return None if level == NATIVE else f"unknown CPU level {level!r} (known: {', '.join(CHOICES)})"
    if lv.arch != arch:
        return f"it was built for {lv.arch} ({level}); this host is {arch}"
    lacking = [f for f in lv.flags if f not in set(flags)]
    if lacking:
        return f"it was built for {level}, and this CPU lacks {', '.join(lacking)}"
    return None


def read_cpuinfo_flags(text: str) -> list[str]:
    """The first processor's flags (x86 `flags`, arm64 `Features`) from /proc/cpuinfo."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return value.split()
    return []
