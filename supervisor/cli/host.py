"""`farmhand detect`: the host's facts, as a table or JSON.
"""

from __future__ import annotations

import click

from .common import emit, gather_facts, gib, paths_of, table


def print_facts(facts: dict) -> None:
    osf = facts.get("os", {})
    distro = (osf.get("distro") or {}).get("pretty_name") or osf.get("macos_version") or "-"
    cpu = facts.get("cpu", {})
    isa = ", ".join(k for k, v in (cpu.get("isa") or {}).items() if v) or "-"
    rows = [
        ["os", f"{osf.get('system')} {osf.get('arch')} · {distro} · kernel {osf.get('kernel')}"],
        ["environment", f"init {osf.get('init')} · container {osf.get('container') or 'no'} · WSL {osf.get('wsl') or 'no'}"],
        ["cpu", f"{cpu.get('model')} · {cpu.get('physical_cores')} cores / {cpu.get('logical_cores')} threads · {isa}"],
        ["memory", f"{gib(facts.get('memory', {}).get('total_bytes'))} total, "
                   f"{gib(facts.get('memory', {}).get('available_bytes'))} available"],
        ["disk", f"{gib(facts.get('disk', {}).get('free_bytes'))} free at {facts.get('disk', {}).get('path')}"],
    ]
    for gpu in facts.get("gpus", []):
        extra = gpu.get("note") or " ".join(x for x in (
            f"driver {gpu['driver']}" if gpu.get("driver") else "",
            f"CUDA {gpu['cuda_version']}" if gpu.get("cuda_version") else "",
            f"{gpu['gfx_target']}{' (ROCm)' if gpu.get('rocm_supported') else ''}" if gpu.get("gfx_target") else "",
            "unified memory" if gpu.get("unified_memory") else "") if x)
        rows.append(["gpu", f"{gpu['vendor']} {gpu['name']} · {gib(gpu.get('vram_bytes'))} · {extra}"])
    if not facts.get("gpus"):
        rows.append(["gpu", "none"])
    for npu in facts.get("npus", []):
        rows.append(["npu", f"{npu['name']}" + (f" · {npu['note']}" if npu.get("note") else "")])
    for note in facts.get("notes", []):
        rows.append(["note", note])
    click.echo(table(rows, ["FACT", "VALUE"]))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the whole snapshot as JSON.")
@click.option("--record", type=click.Path(file_okay=False), help="Save every command output and file read to DIR.")
@click.option("--replay", type=click.Path(exists=True, file_okay=False), help="Run the probes against a recording.")
@click.option("--stable", is_flag=True, help="Only what changes when the host does (no free memory or disk, no "
              "probe timings): for Ansible's facts.d and other files compared run to run.")
@click.pass_context
def detect(ctx, as_json, record, replay, stable):
    """Gather host facts: OS, CPU, RAM, disk, GPUs and NPUs."""
    facts = gather_facts(paths_of(ctx), replay=replay, record=record)
    if stable:
        from ..facts import stable_facts

        facts = stable_facts(facts)
    emit(facts, as_json, print_facts)
    if record and not as_json:
        click.echo(f"recorded to {record} (see docs/recordings.md)")
