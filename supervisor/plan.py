"""The plan: facts + profile -> deployment -> a graph of idempotent steps.

build() decides everything and changes nothing: it tries the matching profiles best first
(a profile whose default role cannot be served here falls back to the next, and the plan says
why), selects what runs where (selection.py), assigns ports, and lays out the steps: installs
(one per distinct install spec), model fetches, the runtime specs, the deployment record,
llamafarm.yaml, the launcher and the supervisor. engine.py converges to it; oracle.py is the
world as the live plan sees it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from . import (
    declare,
    deployment,
    llamafarm,
    portowners,
    profiles,
    sources,
    stepids,
    steps,
)
from .deployment import REMOTE_MAX_TOKENS, DeploymentDecl
from .ledger import Ledger
from .oracle import make_oracle
from .paths import Paths
from .refs import env_ref
from .render import SpecRenderer
from .selection import Oracle, PlanRefused, PortAsk, Selection, select

if TYPE_CHECKING:  # annotations only: a bundle's reader loads for `apply --bundle` alone
    from .bundle import Bundle


@dataclass
class Plan:
    """What `plan` decided and `apply` carries out: the profile chosen, the selection, the steps."""

    profile: dict
    match: profiles.Match
    matches: list[profiles.Match]
    fallbacks: list[str]
    decl: DeploymentDecl
    selection: Selection
    renderer: SpecRenderer
    entries: list[dict]
    launcher: steps.LauncherStep
    steps: list[steps.Step] = field(default_factory=list)
    config_warnings: list[str] = field(default_factory=list)  # what the existing llamafarm.yaml refers to

    @property
    def warnings(self) -> list[str]:
        return self.selection.warnings + self.config_warnings

    def to_json(self, statuses: list | None = None) -> dict:
        sel = self.selection
        spec = self.renderer.render()
        by_name = {r.name: r for r in spec.runtimes}
        out = {
            "profile": {"name": self.profile["name"], "description": self.profile["description"],
                        "why": self.match.summary(), "source": self.profile.get("_source")},
            "fell_back_from": self.fallbacks,
            "default_role": sel.default_role,
            "roles": [_role_record(b, sel) for b in sel.roles],
            "dropped_roles": sel.dropped,
            "skipped": sel.skipped,
            "runtimes": [{
                "name": rt.name, "backend": rt.backend.name, "variant": rt.decl.variant, "managed": rt.managed,
                "external": {"url": rt.external.url, "version": rt.external.version} if rt.external else None,
                "install": rt.install.method, "install_key": rt.install.key, "port": rt.port,
                "url": rt.url, "devices": [d.id for d in rt.devices],
                "split": rt.placement.split if rt.placement else None,
                "models": [{"name": m.model.name, "roles": m.roles, "ctx_size": m.ctx_size, "source": m.source,
                            "memory_bytes": m.estimate.total, "memory": m.estimate.text(),
                            "basis": m.estimate.basis} for m in rt.models],
                "argv": list(by_name[rt.name].argv) if rt.managed else [],
                "env": dict(by_name[rt.name].env) if rt.managed else {},
                "notes": _external_notes(rt) + self.renderer.notes.get(rt.name, []),
            } for rt in sel.runtimes.values()],
            "unused_runtimes": sel.unused_runtimes,
            "memory": sel.pool.summary(),
            "supervisor_port": sel.supervisor_port,
            "warnings": self.warnings,
        }
        if statuses is not None:
            out["steps"] = [{"id": s.id, "status": "up to date" if st.up_to_date else "will change",
                             "detail": st.detail} for s, st in statuses]
            out["changes"] = sum(1 for _, st in statuses if not st.up_to_date)
        return out


def _external_notes(rt) -> list[str]:
    if not rt.external:
        return []
    host = rt.external.url.split("://", 1)[-1]
    return [f"using the {rt.backend.name} already running at {host} (version {rt.external.version}); farmhand "
            "pulls models through its API and never starts, stops, changes or removes it"]


def _role_json(b, sel: Selection) -> dict:
    if b.remote:
        r = b.remote
        return {"role": b.role, "remote": r.name, "provider": r.provider, "model": r.model, "url": r.base_url,
                "api_key_env": r.api_key_env, "note": b.note}
    rt = sel.runtimes[b.runtime]
    served = next(m for m in rt.models if b.role in m.roles)
    return {"role": b.role, "runtime": rt.name, "backend": rt.backend.name, "model": b.model,
            "model_id": rt.model_id(served), "url": rt.url, "managed": rt.managed, "note": b.note}


def _role_record(b, sel: Selection) -> dict:
    """A role as plan and status show it: how it is served, and through which gateway."""
    record = _role_json(b, sel)
    if sel.gateway:
        route = next(r for r in sel.routes if r.name == b.role)
        record |= {"gateway": sel.runtimes[sel.gateway].url, "fallbacks": [u.label for u in route.upstreams[1:]]}
    return record


def build(paths: Paths, facts: dict, ledger: Ledger, *, project_dir: Path, profile_name: str | None = None,
          overrides: dict | None = None, overrides_source: str = "overrides", port_args: dict | None = None,
          reselect: bool = False, profiles_dir: Path = profiles.PROFILES_DIR, live: bool = True,
          oracle: Oracle | None = None, offline: Bundle | None = None) -> Plan:
    all_profiles = profiles.load_profiles(profiles_dir)
    order, matches = profiles.ranked(all_profiles, facts, profile_name)
    pinned_profile = (ledger.data.get("selection") or {}).get("profile")
    if not reselect and not profile_name:  # the last apply's profile first: stable, and no network
        order.sort(key=lambda m: m.profile["name"] != pinned_profile)
    oracle = oracle or make_oracle(paths, ledger, facts, live=live, reselect=reselect, port_args=port_args,
                                   offline=offline)
    fallbacks: list[str] = []
    first_refusal: PlanRefused | None = None
    for match in order:
        profile = profiles.apply_overrides(match.profile, overrides, overrides_source)
        decl = declare.from_profile(profile, f"profile {profile['name']}")
        sources.configure(sources.Mirrors.resolve(profile.get("mirrors")))
        ask = PortAsk(port_args or {}, (profile.get("supervisor") or {}).get("port"),
                      {} if reselect else ledger.asked_ports(), ledger.ports(),
                      portowners.PortCheck(paths) if live else (lambda port: True))
        try:
            selection = select(decl, facts, oracle, None if reselect else ledger.pinned_roles(profile["name"]), ask)
        except PlanRefused as refusal:
            first_refusal = first_refusal or refusal
            fallbacks.append(str(refusal))
            continue
        match.profile = profile
        break
    else:
        tried = ", ".join(m.profile["name"] for m in order)
        raise PlanRefused(f"{first_refusal} (tried {tried})" if len(order) > 1 else str(first_refusal))
    return _lay_out(paths, project_dir, match, matches, fallbacks, decl, selection, oracle)


def _lay_out(paths: Paths, project_dir: Path, match: profiles.Match, matches: list[profiles.Match],
             fallbacks: list[str], decl: DeploymentDecl, selection: Selection, oracle: Oracle) -> Plan:
    profile = match.profile
    renderer = SpecRenderer(selection, paths, profile.get("supervisor") or {}, oracle.header)
    entries = llamafarm_entries(selection)

    rendered = llamafarm.render(entries, selection.default_role, profile["name"], project_dir)
    config_path = project_dir / llamafarm.FILENAME
    try:
        existing = llamafarm.load_existing(config_path)
    except deployment.BadInput:
        existing = None  # the config step's preflight names the problem with file and line
    config_warnings = llamafarm.reference_warnings(entries, existing, config_path) + \
        llamafarm.literal_key_warnings(entries)
    # The file as it will be (the user's other entries beside farmhand's), without parsing the render.
    user = [m for m in ((existing or {}).get("runtime") or {}).get("models") or []
            if isinstance(m, dict) and m.get("name") not in {e["name"] for e in entries}]
    final = {"prompts": (existing or {}).get("prompts"),
             "runtime": {"default_model": selection.default_role, "models": user + entries}}
    config_warnings += [f"{config_path}: {p}" for p in llamafarm.problems(final)
                        if not any(p.startswith(f"model {e['name']}: prompt set") for e in entries)]
    launcher = steps.LauncherStep(paths)
    plan_steps: list[steps.Step] = [launcher]
    installs: dict[str, steps.InstallStep] = {}
    for rt in selection.runtimes.values():
        installs.setdefault(rt.install.key, steps.InstallStep(rt.install, rt.backend))
    plan_steps += installs.values()
    model_steps = {}
    for rt in selection.runtimes.values():
        for served in rt.models:
            if served.via_store:
                model_steps.setdefault(served.model.name, steps.ModelStep(served.model))
            elif rt.backend.reads_hf_cache and sources.scheme_of(served.effective_source) == "hf":
                model_steps.setdefault(served.model.name, steps.RepoStep(served.model.name, served.effective_source))
    plan_steps += model_steps.values()
    stores = [steps.DirStep(f"store:{rt.name}", rt.backend.store_dir(paths)) for rt in selection.runtimes.values()
              if rt.backend.own_store and rt.managed]
    plan_steps += stores
    plan_steps += [steps.DirStep(stepids.scratch(rt.name), paths.runtime_scratch(rt.name), kind="dir")
                   for rt in selection.runtimes.values() if rt.decl.variant in rt.backend.scratch_variants and rt.managed]
    for rt in selection.runtimes.values():  # what a runtime reads that the plan writes (a gateway's config)
        if rt.managed:
            for path in renderer.files(rt):
                plan_steps.append(steps.FileStep(stepids.runtime_file(rt.name, path.name), lambda p, path=path: path,
                                                 lambda rt=rt, path=path: renderer.files(rt)[path], 0o600))
    before_specs = tuple(s.id for s in plan_steps)
    plan_steps.append(steps.FileStep("spec:runtimes.json", lambda p: p.runtimes, renderer.text, 0o600, before_specs))
    plan_steps.append(steps.FileStep("state:deployment.json", lambda p: p.deployment,
                                     _json(deployment_record(profile, selection, decl)), 0o600))
    plan_steps.append(steps.ConfigStep(rendered, [e["name"] for e in entries], selection.default_role,
                                       after=("spec:runtimes.json",)))
    plan_steps.append(steps.RuntimeStep(renderer.render, selection.port_sources,
                                        after=("spec:runtimes.json", "config:llamafarm.yaml")))
    plan_steps += _store_steps(selection, renderer)
    plan_steps.append(steps.PruneStep({s.id for s in installs.values()}, after=(stepids.RUNTIME_UP,)))
    return Plan(profile, match, matches, fallbacks, decl, selection, renderer, entries, launcher, plan_steps,
                config_warnings)


def _store_steps(selection: Selection, renderer: SpecRenderer) -> list[steps.Step]:
    """For backends with their own store: each model pulled or imported once the runtime answers,
    and the default model of a runtime farmhand runs loaded, so the first request does not wait."""
    out: list[steps.Step] = []
    default = selection.binding(selection.default_role)
    for rt in selection.runtimes.values():
        if not rt.backend.own_store:
            continue
        for served in rt.models:
            is_default = rt.name == default.runtime and served.model.name == default.model
            step = steps.StoreModelStep(rt, served, lambda served=served: renderer.launch_model(served),
                                        warm=is_default and not rt.managed)
            out.append(step)
            if is_default and rt.managed:
                out.append(steps.LoadStep(rt, rt.backend.model_id(served), after=(step.id,)))
    return out


def llamafarm_entries(selection: Selection) -> list[dict]:
    """One llamafarm.yaml model entry per role, named after the role."""
    entries = []
    for b in selection.roles:
        if b.remote:
            r = b.remote
            entry = {"name": b.role, "description": f"{r.model} ({r.provider}), declared in the farmhand profile",
                     "provider": r.provider, "model": r.model}
            cap = REMOTE_MAX_TOKENS
            if r.base_url:
                entry["base_url"] = r.base_url
            if r.api_key_env:
                entry["api_key"] = env_ref(r.api_key_env)
        else:
            rt = selection.runtimes[b.runtime]
            served = next(m for m in rt.models if b.role in m.roles)
            entry = {"name": b.role,
                     "description": f"{b.model} on {rt.name} ({urlparse(rt.url).netloc}), managed by farmhand",
                     "provider": rt.backend.provider, "model": rt.model_id(served),
                     "base_url": rt.url}
            cap = served.max_tokens(b.role)
            if rt.decl.api_key_env:
                entry["api_key"] = env_ref(rt.decl.api_key_env)
        if selection.gateway:  # LlamaFarm calls the gateway by the role's name; the gateway holds the keys
            gw = selection.runtimes[selection.gateway]
            route = next(r for r in selection.routes if r.name == b.role)
            entry = {"name": b.role, "description": f"{' -> '.join(u.label for u in route.upstreams)}, through the "
                                                    f"gateway ({urlparse(gw.url).netloc}), managed by farmhand",
                     "provider": gw.backend.provider, "model": b.role, "base_url": gw.url}
            if gw.decl.api_key_env:
                entry["api_key"] = env_ref(gw.decl.api_key_env)
            cap = route.max_tokens
        entry["default"] = b.role == selection.default_role
        entry |= b.llamafarm
        # Every request LlamaFarm sends is bounded (its config's max_tokens wins over the request's).
        entry["model_api_parameters"] = {"max_tokens": cap} | dict(entry.get("model_api_parameters") or {})
        entries.append(entry)
    return entries


def deployment_record(profile: dict, selection: Selection, decl: DeploymentDecl) -> dict:
    """What `farmhand status` shows besides the supervisor's view: every role, local and remote."""
    roles = [{k: v for k, v in _role_record(b, selection).items() if k != "note"} for b in selection.roles]
    return {"profile": profile["name"], "default_role": selection.default_role, "roles": roles,
            "dropped_roles": selection.dropped}


def _json(data: dict) -> str:
    return json.dumps(data, indent=1, sort_keys=True) + "\n"


