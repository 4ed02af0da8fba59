"""Helpers for table-driven plan tests: host facts, a stand-in for the network, and a plan built
by the real plan.build against a throwaway farmhand home (no ports checked, nothing applied)."""

from __future__ import annotations

from pathlib import Path

from supervisor import plan as planmod
from supervisor.ledger import Ledger
from supervisor.paths import Paths
from supervisor.selection import Oracle

GIB = 1024**3
ALL_TOOLS = {t: f"/usr/bin/{t}" for t in ("cc", "c++", "make", "nvcc", "hipcc", "glslc", "xcrun", "ollama", "vllm",
                                          "lemonade-server", "llama-server")}


def host(ram_gib=32, system="Linux", arch="x86_64", gpus=(), npus=(), tools=None, **os_extra) -> dict:
    return {"schema": 1, "os": {"system": system, "arch": arch, **os_extra},
            "cpu": {"model": "x", "logical_cores": 8, "isa": {"avx2": True}},
            "memory": {"total_bytes": int(ram_gib * GIB), "available_bytes": int(ram_gib * GIB)},
            "disk": {"free_bytes": 500 * GIB}, "gpus": list(gpus), "npus": list(npus), "notes": [], "tools": tools}


def nvidia(name, vram_gib, driver="550.54.14", index=0):
    return {"vendor": "nvidia", "index": index, "name": name, "vram_bytes": int(vram_gib * GIB) if driver else None,
            "driver": driver}


def amd(name, vram_gib, gfx, rocm=True):
    return {"vendor": "amd", "name": name, "vram_bytes": int(vram_gib * GIB), "gfx_target": gfx, "rocm_supported": rocm}


def online(model, backend, server=None):
    usable = backend.usable_sources(model)
    return (True, "reachable", usable[0]) if usable else (False, "no usable source", "")


def offline(model, backend, server=None):
    """Only what needs no internet: pip (a mirrored index) and local files."""
    for uri in backend.usable_sources(model):
        if uri.startswith(("pip://", "file://")):
            return True, "offline source", uri
    return False, "no source reachable (hf: name does not resolve (offline?))", ""


def oracle(available=online, header=None, problems: dict | None = None, facts: dict | None = None,
           running=None) -> Oracle:
    """`problems`: {backend name: why it cannot be installed here}; otherwise the real installers
    decide from the facts' tools (none recorded: every tool taken as present). `running`:
    {backend name: RunningServer, or an exception to raise (the adopted one is gone)}."""
    from supervisor import installers

    def install_problem(spec):
        if problems and spec.backend in problems:
            return problems[spec.backend]
        return installers.problem_of(spec, (facts or {}).get("tools"))

    return Oracle(available=available, header=header or (lambda model: None), install_problem=install_problem,
                  running=lambda backend, decl: _running(running, backend))


def _running(running: dict | None, backend):
    found = (running or {}).get(backend.name)
    if isinstance(found, Exception):
        raise found
    return found


def paths_in(root: Path) -> Paths:
    return Paths(root / "data", root / "state", root / "config", root / "cache", "home")


def build(tmp_path: Path, facts: dict, *, oracle_=None, profile=None, overrides=None, ports=None, ledger=None,
          **kw) -> planmod.Plan:
    paths = paths_in(tmp_path / "home")
    project = tmp_path / "project"
    project.mkdir(parents=True, exist_ok=True)
    return planmod.build(paths, facts, ledger or Ledger(paths), project_dir=project, profile_name=profile,
                         overrides=overrides, overrides_source="overrides.yaml", port_args=ports or {}, live=False,
                         oracle=oracle_ or oracle(facts=facts), **kw)


def default_choice(p: planmod.Plan) -> tuple[str, str, str]:
    """(profile, backend, model) of the default role."""
    b = p.selection.binding(p.selection.default_role)
    if b.remote:
        return p.profile["name"], "remote", b.remote.model
    return p.profile["name"], p.selection.runtimes[b.runtime].backend.name, b.model
