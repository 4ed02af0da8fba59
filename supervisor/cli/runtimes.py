"""`farmhand up`, `down`, `run`, `status` and `logs`: the supervisor and its runtimes.
"""

from __future__ import annotations

import sys

import click

from ..errors import EXIT_CONFLICT, BadInput
from .common import NO_WAIT, emit, home_lock, paths_of, table


@click.command()
@click.option("--json", "as_json", is_flag=True)
@NO_WAIT
@click.pass_context
def up(ctx, as_json, no_wait):
    """Start the supervisor detached (or restart runtimes that failed); return once every runtime
    is ready (or failed)."""
    from .. import client
    from ..progress import Reporter

    home_lock(paths_of(ctx), "up", no_wait)
    body = client.up(paths_of(ctx), Reporter())
    emit(body, as_json, print_status)


@click.command()
@click.option("--json", "as_json", is_flag=True)
@NO_WAIT
@click.pass_context
def down(ctx, as_json, no_wait):
    """Stop the supervisor and every runtime; wait until their ports are free. Idempotent."""
    from .. import client

    home_lock(paths_of(ctx), "down", no_wait)
    result = client.down(paths_of(ctx))
    emit(result, as_json, lambda r: click.echo(
        f"stopped in {r['seconds']:.2f}s" if r["stopped"] or r["reaped"] else "nothing was running"))


@click.command()
@click.pass_context
def run(ctx):
    """Run the supervisor in the foreground (systemd, containers)."""
    from ..daemon import run_foreground

    sys.exit(run_foreground(paths_of(ctx)))


def print_status(body: dict) -> None:
    sup = body.get("supervisor")
    click.echo(f"supervisor: {body['status']}" + (f" (pid {sup['pid']})" if sup else ""))
    if body.get("note"):
        click.echo(body["note"])
    rows = []
    for r in body["runtimes"]:
        models = ",".join(r.get("models", []))
        if "loaded" in r:  # a router: which of its models are in memory now
            models += f" (loaded: {','.join(r['loaded']) or 'none'})"
        rows.append([r["name"], r["state"], r.get("pid") or "-", r["port"], f"{r.get('uptime_s') or 0:.0f}s",
                     r.get("restarts", 0), f"{r['last_probe_ms']:.1f}ms" if r.get("last_probe_ms") else "-",
                     "+".join(r.get("devices") or []) or "-", models, r.get("last_error") or ""])
    click.echo(table(rows, ["RUNTIME", "STATE", "PID", "PORT", "UPTIME", "RESTARTS", "PROBE", "DEVICES", "MODELS",
                            "LAST ERROR"]))
    if body.get("roles"):
        click.echo("")
        click.echo(table([[r["role"] + (" *" if r.get("default") else ""), r.get("model_id") or r["model"],
                           r.get("runtime") or f"remote {r.get('provider')}", r.get("url") or "-", r["state"]]
                          for r in body["roles"]], ["ROLE", "MODEL", "SERVED BY", "URL", "STATE"]))
    for warning in body.get("warnings", []):
        click.echo(f"warning: {warning}")


@click.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--watch", is_flag=True, help="A live table (state, restarts, tok/s, RSS) until Ctrl-C.")
@click.option("--interval", type=click.FloatRange(0.2, 3600), default=2.0, show_default=True,
              help="Seconds between redraws with --watch.")
@click.pass_context
def status(ctx, as_json, watch, interval):
    """Every runtime (state, pid, port, uptime, restarts, probe latency, devices) and every role."""
    from ..status import status_body

    if watch:
        if as_json:
            raise BadInput("--watch draws a live table and --json prints one document: use one of them")
        from ..watch import watch as watch_table

        watch_table(paths_of(ctx), interval)
        return

    body = status_body(paths_of(ctx))
    emit(body, as_json, print_status)
    if body["status"] == "not responding":  # README: a supervisor that holds the home but does not answer
        sys.exit(EXIT_CONFLICT)
    if body["status"] not in ("ok", "down"):
        sys.exit(1)


@click.command()
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option("-n", "--lines", default=50, show_default=True)
@click.pass_context
def logs(ctx, name, follow, lines):
    """Print a runtime's log (NAME: a runtime, or `supervisor`)."""
    import time

    path = paths_of(ctx).runtime_log(name)
    if not path.exists():
        known = sorted(p.stem for p in paths_of(ctx).logs.glob("*.log")) if paths_of(ctx).logs.exists() else []
        raise BadInput(f"no log for {name!r}; known: {', '.join(known) or 'none'}")
    with open(path, errors="replace") as fh:
        for line in fh.readlines()[-lines:]:
            click.echo(line, nl=False)
        while follow:
            line = fh.readline()
            if line:
                click.echo(line, nl=False)
            else:
                time.sleep(0.2)
