"""`farmhand plan` and `farmhand apply`: what the plan decides, and converging to it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .. import cpulevel
from ..errors import EXIT_CHANGES_PENDING
from .common import (
    NO_WAIT,
    check_fetch_env,
    emit,
    gather_facts,
    home_lock,
    make_plan,
    paths_of,
    plan_options,
    project_dir_of,
    table,
)


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
        if r.get("gateway"):
            where += " via gateway" + (f", then {', '.join(r['fallbacks'])}" if r.get("fallbacks") else "")
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


@click.command()
@plan_options
@click.option("--explain", is_flag=True, help="Show every profile with the rule that matched or failed, and "
                                              "how each model's memory was estimated.")
@click.option("--facts", "facts_file", type=click.Path(dir_okay=False), help="Plan for a saved `detect --json` snapshot.")
@click.option("--replay", type=click.Path(exists=True, file_okay=False), help="Plan for a recorded host.")
@click.option("--detailed-exitcode", is_flag=True, help=f"Exit {EXIT_CHANGES_PENDING} when the plan would change something.")
@click.pass_context
def plan(ctx, profile, overrides, port, reselect, project_dir, as_json, profiles_dir, explain, facts_file, replay,
         detailed_exitcode):
    """Show the deployment for this host (roles, runtimes, memory per device) and each step."""
    from .. import engine
    from ..progress import Reporter
    from ..steps import Context

    project = project_dir_of(project_dir)
    facts = gather_facts(paths_of(ctx), replay=replay, facts_file=facts_file)
    foreign = bool(replay or facts_file)
    paths, ledger, built = make_plan(ctx, profile=profile, overrides=overrides, port=port, reselect=reselect,
                                      facts=facts, project_dir=project, profiles_dir=profiles_dir, live=not foreign)
    statuses = None
    if not foreign:
        statuses = engine.evaluate(built, Context(paths, ledger, Reporter(quiet=True), project))
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

    emit(data, as_json, human)
    if detailed_exitcode and statuses is not None and data["changes"]:
        sys.exit(EXIT_CHANGES_PENDING)


@click.command()
@plan_options
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
    check_fetch_env()
    import time

    from .. import engine
    from ..progress import Reporter
    from ..steps import Context

    t0 = time.monotonic()
    project = project_dir_of(project_dir)
    home_lock(paths_of(ctx), "apply", no_wait)
    facts = gather_facts(paths_of(ctx), replay=replay, facts_file=facts_file)
    bundled = None
    if bundle_file:
        from ..bundle import Bundle

        bundled = Bundle(Path(bundle_file))
    if bundled is not None:
        bundled.check(facts)
        facts["build"] = {"cpu_level": bundled.manifest.built_for.cpu_level}
    paths, ledger, built = make_plan(ctx, profile=profile, overrides=overrides, port=port, reselect=reselect,
                                      facts=facts, project_dir=project, profiles_dir=profiles_dir, bundled=bundled)
    if bundled is not None and bundled.manifest.built_for.cpu_level in cpulevel.LEVELS:
        ledger.data["build"] = {"cpu_level": bundled.manifest.built_for.cpu_level}  # saved with the apply
    report = Reporter(json_lines=as_json)
    context = Context(paths, ledger, report, project, offline=bundled)
    statuses = engine.evaluate(built, context)
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
            results = engine.apply(built, context)
        finally:
            report.close()
    else:
        results = [{"id": s.id, "changed": False, "detail": st.detail} for s, st in statuses]
        engine.record_choices(built, context)  # nothing to do, but what was chosen is kept
    summary = _apply_summary(built, ledger, results, project, round(time.monotonic() - t0, 3))
    emit(summary, as_json, _print_apply)


def _apply_summary(built, ledger, results: list[dict], project: Path, seconds: float) -> dict:
    from ..steps import InstallStep

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
                   "\"content\": \"Say hello\"}], \"max_tokens\": 64}'")
