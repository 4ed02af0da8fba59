"""The plan: facts + profile -> deployment -> a graph of idempotent steps.

build() decides everything and changes nothing: it tries the matching profiles best first
(a profile whose default role cannot be served here falls back to the next, and the plan says
why), selects what runs where (selection.py), assigns ports, and lays out the steps: installs
(one per distinct install spec), model fetches, the runtime specs, the deployment record,
llamafarm.yaml, the launcher and the supervisor. evaluate() runs every step's cheap check()
(the `farmhand plan` output); apply() runs every preflight first, then only the steps that
differ, independent ones in parallel (backends build while models download).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from . import (
    declare,
    deployment,
    gguf,
    installers,
    llamafarm,
    memo,
    portowners,
    ports,
    profiles,
    sources,
    stepids,
    steps,
    store,
)
from .backends import Backend, get_backend
from .backends.base import RunningServer
from .bundle import Bundle
from .deployment import DeploymentDecl, ModelSpec
from .errors import EnvironmentProblem, FarmhandError
from .ledger import Ledger
from .paths import Paths
from .refs import env_ref
from .render import SpecRenderer
from .selection import Oracle, PlanRefused, PortAsk, Selection, select
from .sources import hf


@dataclass
class Plan:
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
            "roles": [_role_json(b, sel) for b in sel.roles],
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
    served = next(m for m in rt.models if m.model.name == b.model)
    return {"role": b.role, "runtime": rt.name, "backend": rt.backend.name, "model": b.model,
            "model_id": rt.backend.model_id(served), "url": rt.url, "managed": rt.managed, "note": b.note}


def make_oracle(paths: Paths, ledger: Ledger, facts: dict, check_sources: bool = True, live: bool = True,
                reselect: bool = False, port_args: dict | None = None, offline: Bundle | None = None) -> Oracle:
    """The world as a live plan sees it: the store, the sources (or only `offline`, the bundle
    being installed), the installers, the servers already running here (not for a runtime given
    a port of its own: that asks for farmhand's)."""
    held: dict[str, dict[str, str]] = {}

    def in_server(backend: Backend, server: RunningServer) -> dict[str, str]:
        if server.url not in held:
            try:
                held[server.url] = backend.model_store(server.url).present()
            except FarmhandError:
                held[server.url] = {}
        return held[server.url]

    def available(model: ModelSpec, backend: Backend, server: RunningServer | None = None) -> tuple[bool, str, str]:
        usable = backend.usable_sources(model)
        file_based = [u for u in usable if sources.get(u).delivers_file(u)]
        if file_based and store.in_store(paths.models, model, ledger.artifact(stepids.model(model.name))):
            return True, "in store", "store"
        if offline is not None:  # installing from a bundle: what it holds, and no other source is asked
            if file_based and offline.model_member(model.sha256):
                return True, f"in {offline.path.name}", file_based[0]  # store.fetch reads the bundle first
            return False, f"not in {offline.path.name} (a bundle install fetches nothing)", ""
        if server is not None:  # a running server may hold it already: no registry needed
            for uri in usable:
                if uri not in file_based and backend.store_name(model, uri) in in_server(backend, server):
                    return True, f"already in the {backend.name} at {server.url}", uri
        reasons = []
        for uri in usable:
            ok, why = sources.get(uri).reachable(uri) if check_sources else (True, "not checked")
            if ok:
                return True, why, uri
            reasons.append(why)
        return False, "no source reachable (" + "; ".join(reasons) + ")", ""

    def install_problem(spec: installers.InstallSpec) -> str | None:
        backend = get_backend(spec.backend)
        return installers.problem_of(spec, facts.get("tools"), offline) or (
            backend.pull_problem() if backend.own_store else None)

    def running(backend: Backend, decl: deployment.RuntimeDecl) -> RunningServer | None:
        if decl.port is not None or decl.name in (port_args or {}) or None in (port_args or {}):
            return None  # a port of its own asks for farmhand's own runtime
        pinned = None if reselect else ledger.runtime_record(decl.name)
        if pinned and pinned.get("external"):
            url = pinned["external"]
            version = backend.running_version(url)
            if version:
                return RunningServer(url, int(url.rsplit(":", 1)[-1]), version)
            # Relied on since it was adopted: a second Ollama (or another profile) in its place
            # would surprise more than this error does.

            raise EnvironmentProblem(
                f"the {backend.name} at {url} that runtime {decl.name} uses (farmhand did not start it) does not "
                f"answer: start it again ({backend.start_advice()}), or re-run with --reselect to let "
                f"farmhand install its own; nothing was changed")
        if pinned or not live:  # farmhand ran its own last time: keep doing so
            return None
        port = backend.default_port
        if ports.is_free(port) or portowners.PortCheck(paths).holder_is_ours(port):
            return None
        url = f"http://127.0.0.1:{port}"
        version = backend.running_version(url)
        return RunningServer(url, port, version) if version else None

    return Oracle(available=available,
                  header=lambda model: model_header(paths, model, allow_network=check_sources),
                  install_problem=install_problem, running=running)


def model_header(paths: Paths, model: ModelSpec, allow_network: bool = True) -> gguf.GGUFInfo | None:
    """A GGUF model's header: from the store (memoised by the file's fingerprint), else from
    the first MB of an http(s)/hf source (memoised by URL; failures are not remembered)."""
    if not model.is_gguf:
        return None
    path = store.store_path(paths.models, model)
    try:
        st = path.stat()
    except OSError:
        st = None
    if st is not None:
        key = memo.digest("file", str(path), st.st_size, st.st_mtime_ns, st.st_ino)

        def parse():
            try:
                return gguf.read_file(path).to_json()
            except (gguf.GGUFError, OSError):
                return None

        data = memo.remember("gguf", key, parse)
        return gguf.GGUFInfo.from_json(data) if data else None
    for uri in model.sources:  # a local file source: its own header, as cheap as the store's
        if sources.scheme_of(uri) == "file":
            local = Path(uri[len("file://"):])
            try:
                return gguf.GGUFInfo.from_json(memo.remember("gguf", memo.digest("file", str(local),
                                               *_stat_key(local)), lambda f=local: gguf.read_file(f).to_json()))
            except (gguf.GGUFError, OSError):
                continue
    if not allow_network:
        return None
    for uri in model.sources:
        scheme = sources.scheme_of(uri)
        if scheme not in ("http", "https", "hf") or not sources.get(uri).delivers_file(uri):
            continue
        url = sources.get(uri).url(uri)
        headers = {}
        if scheme == "hf":
            from huggingface_hub.utils import build_hf_headers

            headers = build_hf_headers(token=hf.token())  # requests drops it on a redirect to the CDN
        key = memo.digest("url", url)
        data = memo.lookup("gguf", key)
        if data is memo.MISSING:
            try:
                data = gguf.read_url(url, headers=headers, timeout=sources.REACH_TIMEOUT * 2).to_json()
            except Exception:  # noqa: BLE001 - any failure just means "no header": the plan says so
                continue
            memo.store("gguf", key, data)
        return gguf.GGUFInfo.from_json(data)
    return None


def _stat_key(path: Path) -> tuple:
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ino


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
    config_warnings = llamafarm.reference_warnings(entries, existing, config_path)
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
            if r.base_url:
                entry["base_url"] = r.base_url
            if r.api_key_env:
                entry["api_key"] = env_ref(r.api_key_env)
        else:
            rt = selection.runtimes[b.runtime]
            served = next(m for m in rt.models if m.model.name == b.model)
            entry = {"name": b.role,
                     "description": f"{b.model} on {rt.name} ({urlparse(rt.url).netloc}), managed by farmhand",
                     "provider": rt.backend.provider, "model": rt.backend.model_id(served),
                     "base_url": rt.url}
            if rt.decl.api_key_env:
                entry["api_key"] = env_ref(rt.decl.api_key_env)
        entry["default"] = b.role == selection.default_role
        entries.append(entry | b.llamafarm)
    return entries


def deployment_record(profile: dict, selection: Selection, decl: DeploymentDecl) -> dict:
    """What `farmhand status` shows besides the supervisor's view: every role, local and remote."""
    roles = [{k: v for k, v in _role_json(b, selection).items() if k != "note"} for b in selection.roles]
    return {"profile": profile["name"], "default_role": selection.default_role, "roles": roles,
            "dropped_roles": selection.dropped}


def _json(data: dict) -> str:
    return json.dumps(data, indent=1, sort_keys=True) + "\n"


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
