"""The step that has the supervisor run the rendered specs until every runtime is ready (rolling
back an upgrade that does not come up).
"""

from __future__ import annotations

import os
from typing import Callable

from .. import client, portowners, ports, stepids
from ..errors import EnvironmentProblem, FarmhandError
from ..fsio import atomic_write
from ..refs import env_refs
from .base import Context, Status, Step


class RuntimeStep(Step):
    """The supervisor runs the rendered specs and every runtime answers its readiness probe."""

    id = stepids.RUNTIME_UP

    def __init__(self, spec_of: Callable[[], object], port_sources: dict[str, str], after: tuple[str, ...] = ()):
        self.spec_of, self.port_sources, self.after = spec_of, port_sources, after

    def preflight(self, ctx: Context) -> None:

        spec = self.spec_of()
        for runtime in spec.runtimes:
            for _name, value in runtime.env:
                for var in env_refs(value):
                    if not os.environ.get(var):
                        raise EnvironmentProblem(
                            f"{var} is not set (or empty): refusing to start {runtime.name} without its API key; "
                            f"export {var}=... and re-run (nothing was changed)")
        for runtime in spec.runtimes:
            portowners.ensure_free_or_ours(runtime.port, ctx.paths, runtime.name, self.port_sources.get(runtime.name, ""))
        if spec.port:
            portowners.ensure_free_or_ours(spec.port, ctx.paths, "the supervisor's /health",
                                      self.port_sources.get(ports.SUPERVISOR, ""))

    def check(self, ctx: Context) -> Status:

        health = client.health(ctx.paths)
        if not self.spec_of().runtimes:  # every runtime is a server farmhand only uses
            if health is None:
                return Status(True, "nothing for farmhand's supervisor to run")
            return Status(False, "will stop the supervisor: no runtime left for it to run")
        if health is None:
            return Status(False, "will start the supervisor and its runtimes")
        if health.get("spec_digest") != self.spec_of().digest:
            return Status(False, "will restart the supervisor with the new runtime specs")
        states = {r["name"]: r["state"] for r in health.get("runtimes", [])}
        if states and all(s == "ready" for s in states.values()):
            return Status(True, ", ".join(f"{r['name']} ready on :{r['port']}" for r in health["runtimes"]))
        return Status(False, "will restart: " + ", ".join(f"{n} {s}" for n, s in states.items()))

    def apply(self, ctx: Context) -> str:

        health = client.health(ctx.paths)
        was_ready = health is not None and all(r["state"] == "ready" for r in health.get("runtimes", []))
        if health is not None:
            client.down(ctx.paths, ctx.report)
        if not self.spec_of().runtimes:
            return "stopped the supervisor: no runtime left for it to run"
        try:
            result = client.up(ctx.paths, ctx.report)
        except FarmhandError as exc:
            previous = ctx.extra.get("previous:spec:runtimes.json")
            if not (was_ready and previous):
                raise
            # An upgrade that does not come up must not leave the host without what it served:
            # the runtimes that were ready run again (their installs are only pruned after this).
            client.down(ctx.paths, ctx.report)
            atomic_write(ctx.paths.runtimes, previous, 0o600)
            back = client.up(ctx.paths, ctx.report)
            running = ", ".join(f"{r['name']} on :{r['port']}" for r in back["runtimes"])
            raise FarmhandError(f"rolled back: the new runtimes did not come up, the ones that ran before run again "
                                f"({running}); fix the cause and apply again. {exc}", exc.exit_code) from None
        return ", ".join(f"{r['name']} ready on :{r['port']} in {r.get('ready_after_s') or 0:.2f}s"
                         for r in result["runtimes"])
