"""The farmhand command line: detect, plan, apply, up, down, run, status, logs, destroy.

Every command prints a readable table for people and one JSON document with --json; errors
are one line on stderr with a documented exit code (errors.py). Heavy imports stay inside the
commands so `status` and a no-op `apply` start fast.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from . import __version__
from .errors import EXIT_CHANGES_PENDING, FarmhandError


def _paths(ctx: click.Context):
    from . import memo
    from .paths import resolve

    paths = resolve(system=ctx.obj["system"])
    memo.configure(paths.cache / "memo.json")
    return paths


def _emit(data, as_json: bool, human) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        human(data)


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header)] + [fmt.format(*(str(c) for c in r)) for r in rows])


def _gib(n) -> str:
    return "-" if not n else f"{n / 1024**3:.1f} GiB"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="farmhand")
@click.option("--system", is_flag=True, envvar="FARMHAND_SYSTEM",
              help="System mode (root): /opt, /var/lib, /etc instead of the XDG user directories.")
@click.pass_context
def cli(ctx: click.Context, system: bool) -> None:
    """farmhand: make this machine a working local-LLM host, and keep it that way."""
    ctx.ensure_object(dict)
    ctx.obj["system"] = system


# --- detect ----------------------------------------------------------------------------------------

def gather_facts(paths, replay: str | None = None, record: str | None = None, facts_file: str | None = None) -> dict:
    from .facts import hostio, probes

    if facts_file:
        try:
            return json.loads(Path(facts_file).read_text())
        except FileNotFoundError:
            raise FarmhandError(f"{facts_file}: no such file", 2) from None
        except json.JSONDecodeError as exc:
            raise FarmhandError(f"{facts_file}:{exc.lineno}: not a `farmhand detect --json` snapshot ({exc.msg})", 2) from None
    host = hostio.ReplayHost(Path(replay)) if replay else hostio.RecordingHost(Path(record)) if record else hostio.LiveHost()
    facts = probes.gather(host, disk_path=str(paths.data))
    if record:
        host.save()
    return facts


def print_facts(facts: dict) -> None:
    osf = facts.get("os", {})
    distro = (osf.get("distro") or {}).get("pretty_name") or osf.get("macos_version") or "-"
    cpu = facts.get("cpu", {})
    isa = ", ".join(k for k, v in (cpu.get("isa") or {}).items() if v) or "-"
    rows = [
        ["os", f"{osf.get('system')} {osf.get('arch')} · {distro} · kernel {osf.get('kernel')}"],
        ["environment", f"init {osf.get('init')} · container {osf.get('container') or 'no'} · WSL {osf.get('wsl') or 'no'}"],
        ["cpu", f"{cpu.get('model')} · {cpu.get('physical_cores')} cores / {cpu.get('logical_cores')} threads · {isa}"],
        ["memory", f"{_gib(facts.get('memory', {}).get('total_bytes'))} total, "
                   f"{_gib(facts.get('memory', {}).get('available_bytes'))} available"],
        ["disk", f"{_gib(facts.get('disk', {}).get('free_bytes'))} free at {facts.get('disk', {}).get('path')}"],
    ]
    for gpu in facts.get("gpus", []):
        extra = gpu.get("note") or " ".join(x for x in (
            f"driver {gpu['driver']}" if gpu.get("driver") else "",
            f"CUDA {gpu['cuda_version']}" if gpu.get("cuda_version") else "",
            f"{gpu['gfx_target']}{' (ROCm)' if gpu.get('rocm_supported') else ''}" if gpu.get("gfx_target") else "",
            "unified memory" if gpu.get("unified_memory") else "") if x)
        rows.append(["gpu", f"{gpu['vendor']} {gpu['name']} · {_gib(gpu.get('vram_bytes'))} · {extra}"])
    if not facts.get("gpus"):
        rows.append(["gpu", "none"])
    for npu in facts.get("npus", []):
        rows.append(["npu", f"{npu['name']}" + (f" · {npu['note']}" if npu.get("note") else "")])
    for note in facts.get("notes", []):
        rows.append(["note", note])
    click.echo(table(rows, ["FACT", "VALUE"]))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the whole snapshot as JSON.")
@click.option("--record", type=click.Path(file_okay=False), help="Save every command output and file read to DIR.")
@click.option("--replay", type=click.Path(exists=True, file_okay=False), help="Run the probes against a recording.")
@click.pass_context
def detect(ctx, as_json, record, replay):
    """Gather host facts: OS, CPU, RAM, disk, GPUs and NPUs."""
    facts = gather_facts(_paths(ctx), replay=replay, record=record)
    _emit(facts, as_json, print_facts)
    if record and not as_json:
        click.echo(f"recorded to {record} (see docs/recordings.md)")


# --- plan / apply ------------------------------------------------------------------------------------

def _overrides(paths, path: str | None):
    from . import yamlio

    file = Path(path) if path else paths.overrides
    if not file.exists():
        if path:
            raise FarmhandError(f"{path}: no such file", 2)
        return None, str(file)
    data = yamlio.load_file(file)
    if data is not None and not isinstance(data, dict):
        raise FarmhandError(f"{file}:1: overrides must be a mapping of profile fields", 2)
    return data, str(file)


def _make_plan(ctx, *, profile, overrides, port, reselect, facts, profiles_dir=None):
    from . import plan as planmod
    from .ledger import Ledger

    paths = _paths(ctx)
    ledger = Ledger(paths.ledger)
    data, source = _overrides(paths, overrides)
    built = planmod.build(paths, facts, ledger, profile_name=profile, overrides=data, overrides_source=source,
                          port=port, reselect=reselect, **({"profiles_dir": Path(profiles_dir)} if profiles_dir else {}))
    return paths, ledger, built


def _plan_options(fn):
    fn = click.option("--profile", help="Use this profile instead of the best match.")(fn)
    fn = click.option("--overrides", type=click.Path(dir_okay=False),
                      help="YAML merged on top of the profile (default: CONFIG/overrides.yaml).")(fn)
    fn = click.option("--port", type=click.IntRange(1024, 65535), help="Port for the runtime.")(fn)
    fn = click.option("--reselect", is_flag=True, help="Try the profile's preferred models again.")(fn)
    fn = click.option("--project-dir", type=click.Path(file_okay=False), default=".",
                      help="LlamaFarm project directory for llamafarm.yaml.")(fn)
    fn = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")(fn)
    fn = click.option("--profiles-dir", type=click.Path(file_okay=False), envvar="FARMHAND_PROFILES_DIR",
                      help="Read profiles from here instead of the bundled profiles/.")(fn)
    return fn


@cli.command()
@_plan_options
@click.option("--explain", is_flag=True, help="Show every profile with the rule that matched or failed.")
@click.option("--facts", "facts_file", type=click.Path(dir_okay=False), help="Plan for a saved `detect --json` snapshot.")
@click.option("--replay", type=click.Path(exists=True, file_okay=False), help="Plan for a recorded host.")
@click.option("--detailed-exitcode", is_flag=True, help=f"Exit {EXIT_CHANGES_PENDING} when the plan would change something.")
@click.pass_context
def plan(ctx, profile, overrides, port, reselect, project_dir, as_json, profiles_dir, explain, facts_file, replay,
         detailed_exitcode):
    """Show the chosen profile, why it matched, and each step: will change / up to date."""
    from . import plan as planmod
    from .progress import Reporter
    from .steps import Context

    facts = gather_facts(_paths(ctx), replay=replay, facts_file=facts_file)
    foreign = bool(replay or facts_file)
    paths, ledger, built = _make_plan(ctx, profile=profile, overrides=overrides, port=port, reselect=reselect,
                                      facts=facts, profiles_dir=profiles_dir)
    statuses = None
    if not foreign:
        os.chdir(project_dir)
        statuses = planmod.evaluate(built, Context(paths, ledger, Reporter(quiet=True), Path(".").resolve()))
    data = built.to_json(statuses)
    data["explain"] = [{"profile": m.profile["name"], "priority": m.profile["priority"], "matches": m.holds,
                        "why": m.summary()} for m in built.matches]

    def human(d):
        click.echo(f"profile  {d['profile']['name']}: {d['profile']['why']}")
        click.echo(f"backend  {d['backend']}" + (f"  (cannot install here: {d['install_problem']})"
                                                   if d["install_problem"] else ""))
        click.echo(f"model    {d['model']['name']} ({d['model']['note']})")
        for s in d["model"]["skipped"]:
            click.echo(f"         skipped {s}")
        if explain:
            click.echo("")
            click.echo(table([[e["profile"], e["priority"], "yes" if e["matches"] else "no", e["why"]]
                              for e in d["explain"]], ["PROFILE", "PRIORITY", "MATCH", "WHY"]))
        if statuses is not None:
            click.echo("")
            click.echo(table([[s["id"], s["status"], s["detail"]] for s in d["steps"]], ["STEP", "STATUS", "DETAIL"]))
            click.echo(f"\n{d['changes']} to change" if d["changes"] else "\nup to date: nothing to change")

    _emit(data, as_json, human)
    if detailed_exitcode and statuses is not None and data["changes"]:
        sys.exit(EXIT_CHANGES_PENDING)


@cli.command()
@_plan_options
@click.option("--yes", "-y", is_flag=True, help="Do not ask (implied when stdin is not a terminal).")
@click.pass_context
def apply(ctx, profile, overrides, port, reselect, project_dir, as_json, profiles_dir, yes):
    """Converge this host to the plan: install, fetch, configure, start. Idempotent."""
    import time

    from . import plan as planmod
    from .progress import Reporter
    from .steps import Context

    t0 = time.monotonic()
    os.chdir(project_dir)
    facts = gather_facts(_paths(ctx))
    paths, ledger, built = _make_plan(ctx, profile=profile, overrides=overrides, port=port, reselect=reselect,
                                      facts=facts, profiles_dir=profiles_dir)
    report = Reporter(quiet=False)
    context = Context(paths, ledger, report, Path(".").resolve())
    statuses = planmod.evaluate(built, context)
    changes = [s for s, st in statuses if not st.up_to_date]
    if changes and not yes and sys.stdin.isatty() and not as_json:
        click.echo(f"profile {built.profile['name']}: {built.match.summary()}")
        for step, st in statuses:
            click.echo(f"  {'~' if not st.up_to_date else ' '} {step.id}: {st.detail}")
        click.confirm(f"Apply {len(changes)} change(s)?", abort=True)
    if changes:
        report.line(f"profile {built.profile['name']} ({built.match.summary()}); model {built.model['name']}")
        results = planmod.apply(built, context)
    else:
        results = [{"id": s.id, "changed": False, "detail": st.detail} for s, st in statuses]
    runtime = built.specs["runtimes"][0]
    binary = runtime["argv"][0]
    record = ledger.artifact(f"backend:{runtime['backend']}") or {}
    summary = {
        "changed": any(r["changed"] for r in results),
        "seconds": round(time.monotonic() - t0, 3),
        "profile": built.profile["name"],
        "backend": runtime["backend"],
        "backend_version": record.get("version"),
        "model": built.model["name"],
        "url": runtime["base_url"],
        "config": str(Path(project_dir).resolve() / "llamafarm.yaml"),
        "steps": results,
    }

    def human(d):
        click.echo(table([[r["id"], "changed" if r["changed"] else "up to date", r["detail"]] for r in d["steps"]],
                         ["STEP", "RESULT", "DETAIL"]))
        click.echo("")
        if not d["changed"]:
            click.echo(f"up to date: nothing changed ({d['seconds']:.2f}s)")
        click.echo(f"backend  {d['backend']} {d['backend_version'] or ''} ({binary})")
        click.echo(f"model    {d['model']}")
        click.echo(f"url      {d['url']}")
        click.echo(f"config   {d['config']}")
        click.echo("stop     farmhand down   (start again: farmhand up; remove everything: farmhand destroy)")
        click.echo("try it:\n  curl -s " + d["url"] + "/chat/completions -H 'Content-Type: application/json' \\\n"
                   "    -d '{\"model\": \"" + d["model"] + "\", \"messages\": [{\"role\": \"user\", "
                   "\"content\": \"Say hello\"}]}'")

    _emit(summary, as_json, human)


# --- supervisor ------------------------------------------------------------------------------------------

@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def up(ctx, as_json):
    """Start the supervisor detached; return once every runtime is ready (or failed)."""
    from . import client
    from .progress import Reporter

    body = client.up(_paths(ctx), Reporter())
    _emit(body, as_json, _print_status)


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def down(ctx, as_json):
    """Stop the supervisor and every runtime; wait until their ports are free. Idempotent."""
    from . import client

    result = client.down(_paths(ctx))
    _emit(result, as_json, lambda r: click.echo(
        f"stopped in {r['seconds']:.2f}s" if r["stopped"] or r["reaped"] else "nothing was running"))


@cli.command()
@click.pass_context
def run(ctx):
    """Run the supervisor in the foreground (systemd, containers)."""
    from .daemon import run_foreground

    sys.exit(run_foreground(_paths(ctx)))


def _print_status(body: dict) -> None:
    rows = []
    for r in body["runtimes"]:
        rows.append([r["name"], r["state"], r.get("pid") or "-", r["port"], f"{r.get('uptime_s') or 0:.0f}s",
                     r.get("restarts", 0), f"{r['last_probe_ms']:.1f}ms" if r.get("last_probe_ms") else "-",
                     ",".join(r.get("models", [])), r.get("last_error") or ""])
    click.echo(f"supervisor: {body['status']}" + (f" (pid {body['supervisor']['pid']})" if body.get("supervisor") else ""))
    click.echo(table(rows, ["RUNTIME", "STATE", "PID", "PORT", "UPTIME", "RESTARTS", "PROBE", "MODELS", "LAST ERROR"]))


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx, as_json):
    """Each runtime's state, pid, port, uptime, restarts, probe latency and models."""
    from . import client

    paths = _paths(ctx)
    body = client.health(paths)
    if body is None:
        specs = client._read_json(paths.runtimes) or {"runtimes": []}
        body = {"status": "down", "supervisor": None, "runtimes": [
            {"name": r["name"], "state": "stopped", "pid": None, "port": r["port"], "uptime_s": 0, "restarts": 0,
             "last_probe_ms": None, "models": r.get("models", []), "last_error": None} for r in specs["runtimes"]]}
    _emit(body, as_json, _print_status)
    if body["status"] not in ("ok", "down"):
        sys.exit(1)


@cli.command()
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option("-n", "--lines", default=50, show_default=True)
@click.pass_context
def logs(ctx, name, follow, lines):
    """Print a runtime's log (NAME: a runtime, or `supervisor`)."""
    import time

    path = _paths(ctx).logs / f"{name}.log"
    if not path.exists():
        known = sorted(p.stem for p in _paths(ctx).logs.glob("*.log")) if _paths(ctx).logs.exists() else []
        raise FarmhandError(f"no log for {name!r}; known: {', '.join(known) or 'none'}", 2)
    with open(path, errors="replace") as fh:
        for line in fh.readlines()[-lines:]:
            click.echo(line, nl=False)
        while follow:
            line = fh.readline()
            if line:
                click.echo(line, nl=False)
            else:
                time.sleep(0.2)


@cli.command()
@click.option("--purge-models", is_flag=True, help="Also delete downloaded models.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def destroy(ctx, purge_models, yes, as_json):
    """Stop everything and remove all that farmhand created (per its ledger)."""
    from .destroy import destroy as do_destroy

    paths = _paths(ctx)
    if not yes and sys.stdin.isatty() and not as_json:
        click.confirm(f"Remove everything farmhand created under {paths.data.parent if paths.mode == 'home' else paths.data}"
                      f"{' including models' if purge_models else ''}?", abort=True)
    result = do_destroy(paths, purge_models=purge_models)
    _emit(result, as_json, lambda r: click.echo(
        f"removed {len(r['removed'])} path(s); kept {len(r['kept'])}" + "".join(f"\n  kept {k}" for k in r["kept"])))


def main() -> None:
    try:
        cli(standalone_mode=False)
    except FarmhandError as exc:
        click.echo(f"farmhand: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
