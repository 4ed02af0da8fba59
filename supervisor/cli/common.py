"""What every command shares: this home's paths and lock, facts, the plan's inputs, and printing
(a readable table, or one JSON document with --json).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from ..errors import BadInput, FarmhandError


def paths_of(ctx: click.Context):
    from .. import memo
    from ..paths import resolve

    paths = resolve(system=ctx.obj["system"])
    memo.configure(paths.memo)
    # This process's Hugging Face files (huggingface_hub reads these when imported) live in
    # farmhand's store, the HF_HOME its runtimes read, never in the user's home.
    os.environ["HF_HOME"] = str(paths.hf_home)
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # farmhand shows its own
    return paths


HELD: list = []


def home_lock(paths, command: str, no_wait: bool):
    """Hold this home's lock for a converging command; main() lets go when the command ends (the
    kernel does, if it is killed). Then reap what an interrupted command left: helper processes
    and temporaries."""
    from ..ledger import Ledger, sweep_temporaries
    from ..lock import HomeLock
    from ..progress import Reporter

    lock = HomeLock(paths.home_lock, command)
    lock.acquire(wait=not no_wait, report=Reporter())
    HELD.append(lock)
    projects: list[str] = []
    if paths.ledger.exists():
        # down and destroy must work on a damaged ledger: they stop what they find by identity
        ledger = Ledger(paths, tolerate_damage=command in ("down", "destroy"))
        if ledger.damaged:
            click.echo(f"farmhand: warning: {ledger.damaged}", err=True)
        ledger.reap_helpers(_reap_leftovers)
        projects = list(ledger.projects())
    sweep_temporaries(paths, projects)
    return lock


def _reap_leftovers(helpers: list[dict]) -> None:
    from ..process import reap_leftovers  # psutil: only when an interrupted apply left helpers

    reap_leftovers(helpers)


NO_WAIT = click.option("--no-wait", is_flag=True,
                       help="Fail at once (exit 3, naming it) when another farmhand command works on this home.")


def emit(data, as_json: bool, human) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        human(data)


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header)] + [fmt.format(*(str(c) for c in r)) for r in rows])


def gib(n) -> str:
    return "-" if not n else f"{n / 1024**3:.1f} GiB"


def size(n) -> str:
    return "-" if not n else f"{n / 1e6:.0f} MB" if n < 1e9 else f"{n / 1e9:.1f} GB"


def gather_facts(paths, replay: str | None = None, record: str | None = None, facts_file: str | None = None) -> dict:
    from ..facts import hostio, probes

    if facts_file:
        try:
            facts = json.loads(Path(facts_file).read_text())
        except (FileNotFoundError, IsADirectoryError):
            raise BadInput(f"{facts_file}: no such file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            line = getattr(exc, "lineno", 1)
            raise BadInput(f"{facts_file}:{line}: not a `farmhand detect --json` snapshot ({exc})") from None
        shape = {"os": dict, "memory": dict, "gpus": list}
        wrong = [k for k, t in shape.items() if not isinstance(facts, dict) or not isinstance(facts.get(k), t)]
        if wrong:
            raise BadInput(f"{facts_file}:1: not a `farmhand detect --json` snapshot (no {', '.join(wrong)})")
        from .. import yamlio

        yamlio.validate(facts, "facts", f"{facts_file} (a `farmhand detect --json` snapshot)")  # inner types
        return facts
    host = hostio.ReplayHost(Path(replay)) if replay else hostio.RecordingHost(Path(record)) if record else hostio.LiveHost()
    facts = probes.gather(host, disk_path=str(paths.data))
    if record:
        host.save()
    return facts


def load_overrides(paths, path: str | None):
    from .. import yamlio

    file = Path(path) if path else paths.overrides
    if not file.exists():
        if path:
            raise BadInput(f"{path}: no such file")
        return None, str(file)
    data = yamlio.load_file(file)
    if data is not None and not isinstance(data, dict):
        raise BadInput(f"{file}:1: overrides must be a mapping of profile fields")
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
        from ..ports import validate

        try:
            validate(port, f"--port {value}")
        except FarmhandError as exc:
            self.fail(str(exc), param, ctx)
        return (name or None, port)


def check_fetch_env() -> None:
    """A junk FARMHAND_FETCH_* is said up front, naming the variable, by the commands that fetch."""
    from ..fetcher import Policy

    Policy.from_env()


def port_args(given) -> dict:
    """--port values by runtime (None: the default role's); one runtime given two is refused."""
    out: dict = {}
    for name, number in given or ():
        if name in out and out[name] != number:
            who = f"runtime {name}" if name else "the default role's runtime"
            raise BadInput(f"--port: {who} was given {out[name]} and {number}; give each runtime one port")
        out[name] = number
    return out


def make_plan(ctx, *, profile, overrides, port, reselect, facts, project_dir, profiles_dir=None, live=True,
               bundled=None):
    from .. import plan as planmod
    from ..ledger import Ledger

    paths = paths_of(ctx)
    ledger = Ledger(paths)
    data, source = load_overrides(paths, overrides)
    if "build" not in facts and ledger.data.get("build"):
        # a bundle's CPU level stays this home's: later plans and applies keep its build, not rebuild
        facts["build"] = dict(ledger.data["build"])
    if bundled is not None:  # apply --bundle: the bundle's plan inputs, unless given here
        profile = profile or bundled.manifest.profile
        if overrides is None and bundled.manifest.overrides is not None:
            data, source = bundled.manifest.overrides, f"{bundled.path} (its overrides)"
    built = planmod.build(paths, facts, ledger, project_dir=project_dir, profile_name=profile, overrides=data,
                          overrides_source=source, port_args=port_args(port), reselect=reselect, live=live,
                          offline=bundled, **({"profiles_dir": Path(profiles_dir)} if profiles_dir else {}))
    return paths, ledger, built


def project_dir_of(path: str) -> Path:
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise BadInput(f"--project-dir {path}: no such directory")
    return directory.resolve()


def plan_options(fn):
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
