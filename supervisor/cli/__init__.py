"""The farmhand command line: detect, plan, apply, up, down, run, status, logs, models, destroy,
bundle, export. One module per command group, each parsing and printing only; main() turns
every error into one line on stderr with a documented exit code (errors.py).

Every command prints a readable table for people and one JSON document with --json. Each
command imports what it runs when it runs, so `status` and a no-op `apply` start fast.
"""

from __future__ import annotations

import importlib
import json
import os
import sys

import click

from .. import __version__
from ..errors import FarmhandError
from .common import HELD

# Each command and the module that holds it: imported only when that command runs (or --help
# lists them), so `status` does not pay for apply's imports.
COMMANDS = {"detect": "host", "plan": "converge", "apply": "converge", "up": "runtimes", "down": "runtimes",
            "run": "runtimes", "status": "runtimes", "logs": "runtimes", "models": "models", "destroy": "ship",
            "bundle": "ship", "export": "ship"}


class LazyGroup(click.Group):
    """click's documented pattern for subcommands loaded on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module = importlib.import_module(f"{__name__}.{COMMANDS[name]}")
        return getattr(module, name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="farmhand")
@click.option("--system", is_flag=True, envvar="FARMHAND_SYSTEM",
              help="System mode (root): /opt, /var/lib, /etc instead of the XDG user directories.")
@click.pass_context
def cli(ctx: click.Context, system: bool) -> None:
    """farmhand: make this machine a working local-LLM host, and keep it that way."""
    ctx.ensure_object(dict)
    ctx.obj["system"] = system


def main() -> None:
    debug = "--debug" in sys.argv[1:] or os.environ.get("FARMHAND_DEBUG") == "1"
    argv = [a for a in sys.argv[1:] if a != "--debug"]
    try:
        _main(argv, debug)
    finally:
        for lock in HELD:
            lock.release()


def _main(argv: list[str], debug: bool) -> None:
    from .. import memo

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
        from ..errors import from_os_error

        err = from_os_error(exc)
        fail(str(err), err.exit_code)
    except Exception as exc:  # a bug: still one line, the traceback only with --debug
        if debug:
            raise
        fail(f"internal error: {type(exc).__name__}: {exc} (run again with --debug for the traceback, and please "
             "report it)", 1)
