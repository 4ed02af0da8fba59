"""The plan: facts + profile -> the model choice -> runtime specs -> ordered idempotent steps.

build() decides everything and changes nothing; evaluate() runs every step's cheap check()
(the `farmhand plan` output); apply() runs every preflight first, then only the steps that
differ, independent ones in parallel (the backend builds while the model downloads).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from . import config, models, profiles, steps
from .backends import get_backend
from .ledger import Ledger
from .paths import Paths

SUPERVISOR_PORT = 11545
RESTART = {"max_failures": 5, "window_s": 60, "backoff_initial_s": 0.5, "backoff_max_s": 30}


@dataclass
class Plan:
    profile: dict
    match: profiles.Match
    matches: list
    model: dict
    model_note: str
    skipped: list[str]
    specs: dict
    steps: list[steps.Step] = field(default_factory=list)
    install_problem: str | None = None

    def to_json(self, statuses: list | None = None) -> dict:
        out = {
            "profile": {"name": self.profile["name"], "description": self.profile["description"],
                        "why": self.match.summary(), "source": self.profile.get("_source")},
            "backend": self.profile["backend"]["name"],
            "model": {"name": self.model["name"], "note": self.model_note, "skipped": self.skipped},
            "install_problem": self.install_problem,
            "runtimes": [{"name": r["name"], "port": r["port"], "argv": r["argv"]} for r in self.specs["runtimes"]],
        }
        if statuses is not None:
            out["steps"] = [{"id": s.id, "status": "up to date" if st.up_to_date else "will change",
                             "detail": st.detail} for s, st in statuses]
            out["changes"] = sum(1 for _, st in statuses if not st.up_to_date)
        return out


def build(paths: Paths, facts: dict, ledger: Ledger, *, profile_name: str | None = None,
          overrides: dict | None = None, overrides_source: str = "overrides", port: int | None = None,
          reselect: bool = False, profiles_dir: Path = profiles.PROFILES_DIR, check_sources: bool = True) -> Plan:
    all_profiles = profiles.load_profiles(profiles_dir)
    match, matches = profiles.choose(all_profiles, facts, profile_name)
    profile = profiles.apply_overrides(match.profile, overrides, overrides_source)
    match.profile = profile
    backend = get_backend(profile["backend"]["name"])
    model, note, skipped = _choose_model(profile, facts, ledger, paths, reselect, check_sources)

    from . import ports

    runtime_port = ports.validate(port if port is not None else profile["backend"].get("port", backend.default_port),
                                  "runtime port")
    sup = profile.get("supervisor", {})
    install = backend.install_step(profile, paths, ledger)
    binary = install.binary_path()
    model_step = steps.ModelStep(model) if backend.model_store == "file" else None
    model_path = model_step.path(steps.Context(paths, ledger, None, Path("."))) if model_step else None
    launch = backend.launch(binary, runtime_port, model, model_path, profile, paths)
    probe = backend.readiness_probe(runtime_port)
    runtime = {
        "name": backend.name, "backend": backend.name, "argv": launch.argv, "env": launch.env,
        "port": runtime_port, "base_url": backend.base_url(runtime_port),
        "readiness": {"url": probe.url, "expect": probe.expect},
        "stop_signal": backend.stop_signal, "grace_s": sup.get("grace_s", backend.grace_s),
        "start_timeout_s": sup.get("start_timeout_s", backend.start_timeout_s),
        "restart": RESTART | {k: v for k, v in (("max_failures", sup.get("max_failures")),
                                                ("window_s", sup.get("failure_window_s"))) if v},
        "models": [model["name"]],
    }
    specs = {"supervisor": {"host": "127.0.0.1", "port": sup.get("port", SUPERVISOR_PORT)}, "runtimes": [runtime]}
    specs["digest"] = steps.spec_digest(specs)
    spec_text = _json(specs)

    entry = {"name": model["name"], "provider": backend.provider, "model": backend.model_id(model),
             "base_url": backend.base_url(runtime_port), "default": True,
             "description": f"{model['name']} on {backend.name} (127.0.0.1:{runtime_port}), managed by farmhand",
             "api_key_env": profile["backend"].get("api_key_env")}
    rendered = config.render([entry], profile["name"], Path(".").resolve())

    plan_steps: list[steps.Step] = [install]
    after = [install.id]
    if model_step:
        plan_steps.append(model_step)
        after.append(model_step.id)
    plan_steps.append(steps.FileStep("spec:runtimes.json", lambda p: p.runtimes, spec_text, 0o600, tuple(after)))
    plan_steps.append(steps.ConfigStep(rendered, [model["name"]], after=("spec:runtimes.json",)))
    plan_steps.append(steps.RuntimeStep(specs, after=("spec:runtimes.json", "config:llamafarm.yaml")))
    return Plan(profile, match, matches, model, note, skipped, specs, plan_steps,
                install_problem=backend.install_problem(profile) if not install.binary() else None)


def _json(data: dict) -> str:
    import json

    return json.dumps(data, indent=1, sort_keys=True) + "\n"


def _choose_model(profile, facts, ledger, paths, reselect, check_sources):
    """Keep the model the last apply chose for this profile (stable plans, no network on a
    re-run); otherwise the first model that fits and can be had."""
    selection = ledger.data.get("selection", {})
    if not reselect and selection.get("profile") == profile["name"]:
        pinned = next((m for m in profile["models"] if m["name"] == selection.get("model")), None)
        if pinned is not None:
            return pinned, "kept from the last apply (--reselect to try preferred models again)", []

    def available(model: dict) -> tuple[bool, str]:
        if models.in_store(paths.models, model, ledger.artifact(f"model:{model['name']}")):
            return True, "in store"
        if not check_sources:
            return True, "sources not checked"
        reasons = []
        for uri in model["sources"]:
            ok, why = models.source_reachable(uri)
            if ok:
                return True, why
            reasons.append(why)
        return False, "no source reachable (" + "; ".join(reasons) + ")"

    model, skipped = profiles.choose_model(profile, facts, available)
    return model, "first model that fits and can be fetched", skipped


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
    pending = [(s, st) for s, st in statuses]
    with ThreadPoolExecutor(max_workers=4) as pool:
        while pending:
            ready = [(s, st) for s, st in pending if all(d in done for d in s.after)]
            if not ready:
                raise RuntimeError("plan has a dependency cycle: " + ", ".join(s.id for s, _ in pending))
            futures = {}
            for step, status in ready:
                pending.remove((step, status))
                if status.up_to_date:
                    results.append({"id": step.id, "changed": False, "detail": status.detail})
                    done.add(step.id)
                    continue
                ctx.report.line(f"- {step.id}: {status.detail}")
                futures[step.id] = (step, pool.submit(step.apply, ctx))
            error = None
            for step_id, (_step, future) in futures.items():
                try:
                    detail = future.result()
                    results.append({"id": step_id, "changed": True, "detail": detail})
                    ctx.report.line(f"  {step_id}: {detail}")
                    done.add(step_id)
                except BaseException as exc:  # keep what the others did; re-raise the first
                    error = error or exc
            ctx.ledger.save()
            if error is not None:
                raise error
    ctx.ledger.data["selection"] = {"profile": plan.profile["name"], "model": plan.model["name"]}
    ctx.ledger.save()
    return results

