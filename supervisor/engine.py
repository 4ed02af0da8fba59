"""Converging to a plan: evaluate() runs every step's cheap check() (what `farmhand plan` shows);
apply() runs every preflight first, so a plan that cannot finish changes nothing, then only the
steps that differ, in dependency order, independent ones in parallel (backends build while
models download), saving the ledger as it goes; record_choices() keeps what the plan chose.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from . import steps
from .plan import Plan


def evaluate(plan: Plan, ctx: steps.Context) -> list[tuple[steps.Step, steps.Status]]:
    return [(s, s.check(ctx)) for s in plan.steps]


def apply(plan: Plan, ctx: steps.Context) -> list[dict]:
    """Preflight everything, then apply what differs in dependency order; record as we go."""
    statuses = evaluate(plan, ctx)
    for step, status in statuses:
        if not status.up_to_date:
            step.preflight(ctx)
    results: list[dict] = []
    done: set[str] = set()
    changed: set[str] = set()
    pending = list(statuses)
    with ThreadPoolExecutor(max_workers=4) as pool:
        while pending:
            ready = [(s, st) for s, st in pending if all(d in done for d in s.after)]
            if not ready:
                raise RuntimeError("plan has a dependency cycle: " + ", ".join(s.id for s, _ in pending))
            futures = {}
            for step, status in ready:
                pending.remove((step, status))
                # What a step depends on may have just changed (a fetched model's header decides
                # the runtime's argv): look again before deciding.
                current = step.check(ctx) if changed.intersection(step.after) else status
                if current.up_to_date:
                    results.append({"id": step.id, "changed": False, "detail": current.detail})
                    done.add(step.id)
                    continue
                ctx.report.line(f"- {step.id}: {current.detail}")
                futures[step.id] = (step, pool.submit(step.apply, ctx))
            error = None
            for step_id, (_step, future) in futures.items():
                try:
                    detail = future.result()
                    results.append({"id": step_id, "changed": True, "detail": detail})
                    ctx.report.line(f"  {step_id}: {detail}")
                    done.add(step_id)
                    changed.add(step_id)
                except BaseException as exc:  # keep what the others did; re-raise the first
                    error = error or exc
            if error is not None:
                try:
                    ctx.ledger.save()
                except OSError:
                    pass  # the step's own error (a full disk, say) is the one to report
                raise error
            ctx.ledger.save()
    record_choices(plan, ctx)
    return results


def record_choices(plan: Plan, ctx: steps.Context) -> bool:
    """Keep what this plan chose (roles' models, runtimes farmhand runs or uses, ports and the
    ones a --port chose) so a re-run keeps them; saved only when they differ. Called by every
    apply, a no-op one too: a port asked for by a run killed after its runtime came up is
    recorded by the re-run that finds everything in place."""
    before = (ctx.ledger.data.get("selection"), ctx.ledger.data.get("runtimes"), ctx.ledger.ports(),
              ctx.ledger.asked_ports())
    ctx.ledger.pin_roles(plan.profile["name"], plan.selection.pins())
    ctx.ledger.set_runtime_records({rt.name: {"external": rt.external.url} if rt.external else {"managed": True}
                                    for rt in plan.selection.runtimes.values()})
    ctx.ledger.set_ports(plan.selection.ports(), plan.selection.asked_ports)
    after = (ctx.ledger.data.get("selection"), ctx.ledger.data.get("runtimes"), ctx.ledger.ports(),
             ctx.ledger.asked_ports())
    if after != before:
        ctx.ledger.save()
    return after != before
