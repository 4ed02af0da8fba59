"""`farmhand destroy`, `bundle create` and `export`: taking a host down, and farmhand to other hosts.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .. import cpulevel
from ..errors import BadInput
from .common import (
    NO_WAIT,
    check_fetch_env,
    emit,
    gather_facts,
    home_lock,
    load_overrides,
    make_plan,
    paths_of,
)


@click.command()
@click.option("--purge-models", is_flag=True, help="Also delete downloaded models.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask.")
@click.option("--json", "as_json", is_flag=True)
@NO_WAIT
@click.pass_context
def destroy(ctx, purge_models, yes, as_json, no_wait):
    """Stop everything and remove all that farmhand created (per its ledger)."""
    from ..destroy import destroy as do_destroy

    paths = paths_of(ctx)
    if not yes and sys.stdin.isatty() and not as_json:
        click.confirm(f"Remove everything farmhand created under {paths.data.parent if paths.mode == 'home' else paths.data}"
                      f"{' including models' if purge_models else ''}?", abort=True)
    lock = home_lock(paths, "destroy", no_wait)
    result = do_destroy(paths, purge_models=purge_models, lock=lock)
    emit(result, as_json, lambda r: click.echo(
        f"removed {len(r['removed'])} path(s); kept {len(r['kept'])}" + "".join(f"\n  kept {k}" for k in r["kept"])))


@click.group()
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
    check_fetch_env()
    from .. import bundle_create
    from ..progress import Reporter

    paths = paths_of(ctx)
    home_lock(paths, "bundle create", no_wait)
    facts = gather_facts(paths, replay=replay, facts_file=facts_file)
    if cpu_level != "auto":
        facts["build"] = {"cpu_level": cpu_level}
    out_path = Path(out)
    if not out_path.parent.is_dir():
        raise BadInput(f"{out}: no directory {out_path.parent}")
    data, _ = load_overrides(paths, overrides)
    # The target's plan with this machine's tools: the bundle is built here, installed there.
    facts["tools"] = gather_facts(paths).get("tools") if (replay or facts_file) else facts.get("tools")
    paths, ledger, built = make_plan(ctx, profile=profile, overrides=overrides, port=(), reselect=True, facts=facts,
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

    emit(result, as_json, human)


@click.group()
def export():
    """farmhand as input for fleet engines: cloud-init user-data, Kubernetes manifests, a Prometheus
    scrape config."""


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
    from .. import export as exportmod
    from ..cli_checks import check_sha256, check_url

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
    from .. import export as exportmod
    from ..cli_checks import check_url

    check_url("--bundle-url", bundle_url)
    exportmod.check_kubernetes_args(namespace, image, node_label)
    facts = gather_facts(paths_of(ctx), replay=replay, facts_file=facts_file)
    _, _, built = make_plan(ctx, profile=profile, overrides=None, port=(), reselect=True, facts=facts,
                            project_dir=Path.cwd(), live=False)
    click.echo(exportmod.kubernetes_for_plan(built.to_json(), namespace=namespace, image=image, node_label=node_label,
                                             bundle_url=bundle_url), nl=False)


@export.command("prometheus")
@click.option("--target", "targets", multiple=True,
              help="HOST:PORT of a supervisor to scrape (default: this host's). Supervisors listen on "
                   "loopback only: a fleet runs a Prometheus (or agent) per host and federates.")
@click.option("--interval", default="15s", show_default=True, help="How often Prometheus scrapes.")
@click.option("--job", default="farmhand", show_default=True, help="The job's name (its `job` label).")
@click.pass_context
def export_prometheus(ctx, targets, interval, job):
    """Print a prometheus.yml scraping the supervisor's GET /metrics (docs/grafana-farmhand.json
    charts what it collects)."""
    from .. import export as exportmod

    if not targets:
        targets = (_own_supervisor(paths_of(ctx)),)
    click.echo(exportmod.prometheus(list(targets), interval=interval, job=job), nl=False)


def _own_supervisor(paths) -> str:
    """This home's supervisor address: where it listens now, else the port apply gave it."""
    from .. import statefiles
    from ..ledger import Ledger
    from ..ports import SUPERVISOR

    record, _ = statefiles.read_supervisor(paths)
    if record is not None and record.port:
        return f"{record.host}:{record.port}"
    port = Ledger(paths, tolerate_damage=True).ports().get(SUPERVISOR)
    if port:
        return f"127.0.0.1:{port}"
    raise BadInput("no supervisor address known for this home: run `farmhand apply` first, or pass "
                   "--target HOST:PORT")
