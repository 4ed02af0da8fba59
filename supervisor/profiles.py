"""Profiles: declarative YAML in profiles/, matched against host facts.

A profile's `match` is a set of named rules; each rule explains itself whether it holds or
fails ("vram_gib >= 40: best NVIDIA GPU has 24.0 GiB"), so `plan --explain` can say why every
profile was or was not chosen. The highest-priority profile whose rules all hold wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import declare, deployment, ports, yamlio
from .errors import BadInput
from .facts.parsers import MISMATCH

GIB = 1024**3
PROFILES_DIR = Path(__file__).resolve().parent.parent / "profiles"


@dataclass
class Rule:
    """One match rule of a profile against this host, with why it held or failed."""

    name: str
    holds: bool
    why: str


@dataclass
class Match:
    """How a profile matched this host: every rule, and whether all held."""

    profile: dict
    rules: list[Rule] = field(default_factory=list)

    @property
    def holds(self) -> bool:
        return all(r.holds for r in self.rules)

    def summary(self) -> str:
        if self.holds:
            return "; ".join(r.why for r in self.rules) or "matches any host"
        first = next(r for r in self.rules if not r.holds)
        return f"{first.name}: {first.why}"


def load_profiles(directory: Path = PROFILES_DIR) -> list[dict]:
    profiles = []
    for path in sorted(Path(directory).glob("*.yaml")):
        doc = yamlio.load_file(path)
        check(doc, str(path))
        doc["_source"] = str(path)
        profiles.append(doc)
    if not profiles:
        raise BadInput(f"{directory}: no profiles (*.yaml) found")
    return sorted(profiles, key=lambda p: -p["priority"])


def check(doc: dict, source: str) -> None:
    """Schema, then what the schema cannot say: references, backends, reserved ports."""

    deployment.check_legacy(doc, source)
    yamlio.validate(doc, "profile", source)
    declare.from_profile(doc, source)
    for name, runtime in (doc["deployment"].get("runtimes") or {}).items():
        if runtime and runtime.get("port") is not None:
            ports.validate(runtime["port"], f"{source}: deployment.runtimes.{name}.port")
    if (doc.get("supervisor") or {}).get("port"):
        ports.validate(doc["supervisor"]["port"], f"{source}: supervisor.port")


def apply_overrides(profile: dict, overrides: dict | None, source: str) -> dict:
    """Merge user overrides on top of a profile (Helm values: `null` removes a key) and check it."""
    if not overrides:
        return profile

    deployment.check_legacy(overrides, source)
    merged = yamlio.deep_merge({k: v for k, v in profile.items() if not k.startswith("_")}, overrides)
    check(merged, f"{source} (merged onto profile {profile['name']})")
    merged["_source"] = profile.get("_source", "")
    return merged


# --- match rules -------------------------------------------------------------------------------

def _gib(n: int | None) -> str:
    return "unknown" if n is None else f"{n / GIB:.1f} GiB"


def usable_gpus(facts: dict, vendors: list[str] | None = None) -> list[dict]:
    """GPUs with a working driver (known VRAM), optionally of some vendors."""
    gpus = [g for g in facts.get("gpus", []) if g.get("vram_bytes")]
    if vendors:
        gpus = [g for g in gpus if g["vendor"] in vendors]
    return gpus


def best_gpu(facts: dict, vendors: list[str] | None = None) -> dict | None:
    gpus = usable_gpus(facts, vendors)
    return max(gpus, key=lambda g: g["vram_bytes"]) if gpus else None


def _in_range(value: float | None, spec: dict) -> bool:
    if value is None:
        return False
    return value >= spec.get("min", float("-inf")) and value <= spec.get("max", float("inf"))


def _range_text(name: str, spec: dict) -> str:
    parts = []
    if "min" in spec:
        parts.append(f">= {spec['min']}")
    if "max" in spec:
        parts.append(f"<= {spec['max']}")
    return f"{name} {' and '.join(parts)}"


def _rule_os(spec, facts, match):
    system = (facts.get("os", {}).get("system") or "").lower()
    return system in spec, f"os is {system or 'unknown'}"


def _rule_arch(spec, facts, match):
    arch = facts.get("os", {}).get("arch")
    return arch in spec, f"arch is {arch}"


def _rule_gpu_vendor(spec, facts, match):
    present = [g for g in facts.get("gpus", []) if g["vendor"] in spec]
    if not present:
        have = sorted({g["vendor"] for g in facts.get("gpus", [])}) or ["none"]
        return False, f"no {'/'.join(spec)} GPU (GPUs: {', '.join(have)})"
    names = ", ".join(sorted({g["name"] for g in present}))
    return True, f"{len(present)}x {names}"


def _rule_gpu_driver(spec, facts, match):
    vendors = match.get("gpu_vendor")
    present = [g for g in facts.get("gpus", []) if not vendors or g["vendor"] in vendors]
    working = usable_gpus(facts, vendors)
    if spec:
        mismatch = any(MISMATCH in (g.get("note") or "") for g in present)
        return bool(working), ("driver working" if working else f"GPU present, {MISMATCH}" if mismatch else
                               "GPU present, no driver" if present else "no GPU")
    return not working and bool(present), ("GPU without driver" if present and not working else "driver working")


def _rule_vram(spec, facts, match):
    gpu = best_gpu(facts, match.get("gpu_vendor"))
    vram = gpu["vram_bytes"] / GIB if gpu else None
    text = _range_text("vram_gib", spec)
    if gpu is None:
        return False, f"{text}: no GPU with known VRAM"
    return _in_range(vram, spec), f"{text}: {gpu['name']} has {_gib(gpu['vram_bytes'])}"


def _rule_ram(spec, facts, match):
    total = facts.get("memory", {}).get("total_bytes")
    return _in_range(total / GIB if total else None, spec), f"{_range_text('ram_gib', spec)}: RAM {_gib(total)}"


def _rule_rocm(spec, facts, match):
    amd = [g for g in facts.get("gpus", []) if g["vendor"] == "amd"]
    supported = [g for g in amd if g.get("rocm_supported")]
    holds = bool(supported) if spec else bool(amd) and not supported
    targets = ", ".join(str(g.get("gfx_target")) for g in amd) or "no AMD GPU"
    return holds, f"rocm_supported is {spec}: gfx {targets}"


def _rule_npu(spec, facts, match):
    npus = [n for n in facts.get("npus", []) if n["vendor"] in spec and "note" not in n]
    if npus:
        return True, f"NPU {npus[0]['name']}"
    unloaded = [n for n in facts.get("npus", []) if n["vendor"] in spec]
    return False, "NPU present but no driver loaded" if unloaded else "no NPU"


def _rule_no_accel(spec, facts, match):
    gpus = usable_gpus(facts)
    npus = [n for n in facts.get("npus", []) if "note" not in n]
    none = not gpus and not npus
    what = ", ".join(g["name"] for g in gpus) or ("NPU" if npus else "none usable")
    return none == spec, f"accelerators: {what}"


RULES: dict[str, Callable[[object, dict, dict], tuple[bool, str]]] = {
    "os": _rule_os,
    "arch": _rule_arch,
    "gpu_vendor": _rule_gpu_vendor,
    "gpu_driver": _rule_gpu_driver,
    "vram_gib": _rule_vram,
    "ram_gib": _rule_ram,
    "rocm_supported": _rule_rocm,
    "npu_vendor": _rule_npu,
    "no_accelerator": _rule_no_accel,
}


def evaluate(profile: dict, facts: dict) -> Match:
    result = Match(profile)
    for name, spec in profile.get("match", {}).items():
        holds, why = RULES[name](spec, facts, profile["match"])
        result.rules.append(Rule(name, holds, why))
    return result


def ranked(profiles: list[dict], facts: dict, forced: str | None = None) -> tuple[list[Match], list[Match]]:
    """(the profiles to try, best first; every profile's evaluation for --explain).

    A forced profile is the only one to try; otherwise every profile whose rules hold, by
    priority (a plan falls back to the next one when a profile cannot be served here)."""
    matches = [evaluate(p, facts) for p in profiles]
    if forced:
        for m in matches:
            if m.profile["name"] == forced:
                m.rules.insert(0, Rule("forced", True, "--profile " + forced))
                return [m], matches
        known = ", ".join(p["name"] for p in profiles)
        raise BadInput(f"unknown profile {forced!r}; known profiles: {known}")
    holding = [m for m in matches if m.holds]
    if not holding:
        raise BadInput("no profile matches this host (add a catch-all profile with an empty match)")
    return holding, matches


def choose(profiles: list[dict], facts: dict, forced: str | None = None) -> tuple[Match, list[Match]]:
    """The best matching profile and every profile's evaluation."""
    order, matches = ranked(profiles, facts, forced)
    return order[0], matches
