"""Selection: a declared deployment + host facts -> what runs where on this host.

Roles are served in order, the default role first. For each role the first candidate that can
run here wins:
  - its runtime's backend can serve the model from a source it can use;
  - the runtime can be installed here (toolchain, binary on PATH, ...) and, for backends with
    their own model store, farmhand can put models into it;
  - a source can deliver the model now (or the store already has it);
  - the runtime has room for another model (llama-server and vLLM serve one per process);
  - the model fits in memory beside everything placed before it (memory.py).
Every candidate passed over keeps its reason, so `plan` can say why it fell back. A role
with no candidate left is dropped with its reasons; the default role cannot be dropped: the
plan is refused with the per-device sums. A runtime no role chose is not installed or started.
A declared gateway is one more runtime (no model, no memory); each role's route through it
is its chosen candidate, then the later ones served here. Last, every runtime in use and the
supervisor get their port (PortAsk says what was asked).

Nothing here touches the host: what the world says (is a source reachable, what does a GGUF
header hold, can this be installed, is a key's variable set, may a port be used) comes through
an Oracle and a PortAsk, which tests replace.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable

from . import ports, sources
from .backends import Backend, get_backend
from .backends.base import Route, RunningServer, Upstream
from .deployment import (
    REMOTE_MAX_TOKENS,
    Candidate,
    DeploymentDecl,
    ModelSpec,
    RemoteDecl,
    RoleDecl,
    RuntimeDecl,
    default_max_tokens,
)
from .errors import BadInput, Unsupported
from .gguf import GGUFInfo
from .installers import InstallSpec
from .memory import Device, DevicePool, Estimate, Placement, devices_from_facts, estimate


class PlanRefused(Unsupported):
    """The default role cannot be served on this host (exit 5, like a backend that cannot be installed)."""


@dataclass
class Oracle:
    """What selection asks of the world. `available(model, backend, server)` -> (ok, why, source),
    where `server` is a running server of the runtime whose own store may already hold the
    model; `header(model)` -> GGUFInfo or None; `install_problem(spec)` -> why this install
    cannot happen here, or None; `running(backend, decl)` -> a server of that backend already
    running here that farmhand did not start (RunningServer) or None; it raises when one that
    farmhand relied on is gone."""

    available: Callable[[ModelSpec, Backend, RunningServer | None], tuple[bool, str, str]]
    header: Callable[[ModelSpec], GGUFInfo | None]
    install_problem: Callable[[InstallSpec], str | None]
    running: Callable[[Backend, RuntimeDecl], RunningServer | None] = lambda backend, decl: None
    # Whether an environment variable is set (a remote model's key). The default reads this
    # process's environment, which is what the live plan and the tests' plans both mean.
    is_set: Callable[[str], bool] = lambda name: bool(os.environ.get(name))


@dataclass(frozen=True)
class PortAsk:
    """What decides the ports: the --port arguments ({runtime, or None for the default role's:
    port}), the profile's supervisor.port, the runtimes an earlier --port chose (and the ports
    recorded for every runtime), and whether a port may be used here (free, or held by this
    farmhand's own processes)."""

    args: Mapping[str | None, int] = field(default_factory=dict)
    supervisor: int | None = None
    asked_before: Mapping[str, str] = field(default_factory=dict)
    recorded: Mapping[str, int] = field(default_factory=dict)
    usable: Callable[[int], bool] = lambda port: True


@dataclass
class ServedModel:
    """A model a runtime serves, with its roles, context size, memory estimate and source."""

    model: ModelSpec
    roles: list[str]
    ctx_size: int
    estimate: Estimate
    source: str  # "store" (farmhand has it), "kept" (pinned by the last apply), or the URI that delivers it
    info: GGUFInfo | None
    pinned_source: str = ""  # with "kept": the source the last apply used
    embeddings: bool = False  # a role it serves declared `embeddings: true`
    declared_max_tokens: dict[str, int | None] = field(default_factory=dict)  # role -> its profile's cap

    def max_tokens(self, role: str) -> int:
        """The reply cap of one role it serves: the profile's, else sized to the context."""
        return self.declared_max_tokens.get(role) or default_max_tokens(self.ctx_size)

    @property
    def longest_reply(self) -> int:
        """The largest cap of the roles it serves: what one generation may run to."""
        return max(self.max_tokens(r) for r in self.roles)

    @property
    def effective_source(self) -> str:
        return self.pinned_source if self.source == "kept" else self.source

    @property
    def via_store(self) -> bool:
        """Delivered as a file into farmhand's store (else the backend pulls it itself)."""
        src = self.effective_source
        return src == "store" or ("://" in src and sources.get(src).delivers_file(src))


@dataclass
class RuntimePlan:
    """A runtime as selection placed it: backend, install, devices, models and port."""

    decl: RuntimeDecl
    backend: Backend
    install: InstallSpec
    pool: DevicePool
    placement: Placement | None = None
    models: list[ServedModel] = field(default_factory=list)
    port: int = 0
    external: RunningServer | None = None  # a server farmhand uses but did not start

    @property
    def managed(self) -> bool:
        """farmhand starts and stops this runtime (else it only talks to it)."""
        return self.external is None

    @property
    def name(self) -> str:
        return self.decl.name

    @property
    def url(self) -> str:
        return self.backend.base_url(self.port, self.decl.host)

    @property
    def devices(self) -> list[Device]:
        return [self.pool.device(d) for d in self.placement.devices] if self.placement else []

    def model_id(self, served: ServedModel) -> str:
        """The model name clients send for `served`: a router's models are named by their role."""
        return served.roles[0] if self.decl.router else self.backend.model_id(served)

    def used_on(self, device_id: str) -> int:
        labels = {m.model.name for m in self.models}
        return sum(i.estimate.total for i in self.pool.items.get(device_id, []) if i.label in labels)

    def grantable_fraction(self, device: Device) -> float:
        """What this runtime may claim of a device: its own share plus what nobody was given."""
        free = self.pool.free(device.id) or 0
        return (self.used_on(device.id) + max(free, 0)) / device.total_bytes


@dataclass(frozen=True)
class RoleBinding:
    """Which runtime and model (or remote model) serve a role, and why."""

    role: str
    runtime: str | None
    model: str | None
    remote: RemoteDecl | None
    llamafarm: dict
    note: str


@dataclass(frozen=True)
class Selection:
    """What select() decided; nothing changes it afterwards."""

    profile: str
    runtimes: dict[str, RuntimePlan]
    roles: list[RoleBinding]
    default_role: str
    dropped: dict[str, list[str]]
    skipped: dict[str, list[str]]
    unused_runtimes: list[str]
    pool: DevicePool
    warnings: list[str]
    supervisor_port: int = 0
    port_sources: dict[str, str] = field(default_factory=dict)  # runtime (or supervisor) -> where its port was asked
    asked_ports: dict[str, str] = field(default_factory=dict)  # runtime -> the --port that chose it
    gateway: str | None = None  # the runtime every role is reached through (deployment.gateway)
    routes: tuple[Route, ...] = ()  # the gateway's: each role, its deployment, then its fallbacks

    def binding(self, role: str) -> RoleBinding:
        return next(b for b in self.roles if b.role == role)

    def ports(self) -> dict[str, int]:
        """Every runtime's port and the supervisor's (what the ledger records)."""
        return {name: rt.port for name, rt in self.runtimes.items()} | {ports.SUPERVISOR: self.supervisor_port}

    def pins(self) -> dict[str, dict]:
        """What a re-run keeps (ledger.pin_roles)."""
        pins = {}
        for b in self.roles:
            if b.remote:
                pins[b.role] = {"remote": b.remote.name}
                continue
            served = next(m for m in self.runtimes[b.runtime].models if b.role in m.roles)
            source = served.source if served.source not in ("kept",) else served.pinned_source
            pins[b.role] = {"runtime": b.runtime, "model": b.model, "source": source}
        return pins


def select(decl: DeploymentDecl, facts: dict, oracle: Oracle, pinned: dict[str, dict] | None = None,
           ask: PortAsk | None = None) -> Selection:
    """The runtimes, models, placements and ports that serve `decl`'s roles on the host `facts` describes."""
    pool = DevicePool(devices_from_facts(facts, decl.memory))
    plans: dict[str, RuntimePlan] = {}
    bindings: dict[str, RoleBinding] = {}
    dropped: dict[str, list[str]] = {}
    skipped: dict[str, list[str]] = {}
    warnings: list[str] = []
    pinned = pinned or {}
    for role in decl.ordered_roles():
        order = list(enumerate(role.use))
        pin = _pinned_candidate(role, pinned.get(role.name))
        if pin is not None:
            order.insert(0, (-1, pin))
        reasons: list[str] = []
        for index, cand in order:
            if cand.remote:
                remote = decl.remote[cand.remote]
                bindings[role.name] = RoleBinding(role.name, None, None, remote, role.llamafarm,
                                                  _note(index, len(role.use)))
                if remote.api_key_env and not oracle.is_set(remote.api_key_env) and not decl.gateway:
                    warnings.append(f"role {role.name}: {remote.api_key_env} is not set; LlamaFarm cannot call "
                                    f"{remote.model} at {remote.base_url or remote.provider} until it is")
                break
            why = _try_local(decl, facts, role, cand, plans, pool, oracle,
                             kept=(pinned.get(role.name) or {}).get("source") if index == -1 else None)
            if why is None:
                bindings[role.name] = RoleBinding(role.name, cand.runtime, cand.model, None, role.llamafarm,
                                                  _note(index, len(role.use)))
                break
            reasons.append(f"{cand.describe()}: {why}")
        else:
            if role.name == decl.default_role:
                raise PlanRefused(f"profile {decl.profile}: the default role {role.name!r} cannot be served here: "
                                  + "; ".join(dict.fromkeys(reasons)))
            dropped[role.name] = list(dict.fromkeys(reasons))
            continue
        if reasons:
            skipped[role.name] = list(dict.fromkeys(reasons))
    used = {name: plan for name, plan in plans.items() if plan.models}
    declared_order = [r for r in decl.roles if r in bindings]
    runtimes = {n: used[n] for n in decl.runtimes if n in used}
    roles = [bindings[r] for r in declared_order]
    default_binding = next(b for b in roles if b.role == decl.default_role)
    if decl.gateway:
        runtimes[decl.gateway.runtime.name] = _gateway_plan(decl, facts, oracle, pool)
    sup_port, port_sources, asked = assign_ports(runtimes, default_binding.runtime, ask or PortAsk(), warnings)
    routes = gateway_routes(decl, roles, runtimes, oracle.is_set, warnings) if decl.gateway else ()
    return Selection(
        profile=decl.profile, runtimes=runtimes, roles=roles, default_role=decl.default_role, dropped=dropped,
        skipped=skipped, unused_runtimes=[n for n in decl.runtimes if n not in used], pool=pool, warnings=warnings,
        supervisor_port=sup_port, port_sources=port_sources, asked_ports=asked,
        gateway=decl.gateway.runtime.name if decl.gateway else None, routes=routes)


def _gateway_plan(decl: DeploymentDecl, facts: dict, oracle: Oracle, pool: DevicePool) -> RuntimePlan:
    """The gateway asked for runs, or the plan is refused: LlamaFarm would be pointed at it."""
    gw = decl.gateway.runtime
    backend = get_backend(gw.backend)
    install = backend.install_spec(gw, facts)
    problem = oracle.install_problem(install)
    if problem:
        raise PlanRefused(f"profile {decl.profile}: deployment.gateway ({backend.name}) cannot be installed here: "
                          f"{problem}")
    return RuntimePlan(gw, backend, install, pool)


def _upstreams(decl: DeploymentDecl, role: RoleDecl, binding: RoleBinding,
               runtimes: dict[str, RuntimePlan]) -> list[Upstream]:
    """A role's own chain: the candidate it got, then each later one that is served on this host
    (a remote model, or a model a runtime in the plan serves for another role)."""
    chain: list[Upstream] = []
    chosen = next((i for i, c in enumerate(role.use) if (binding.remote and c.remote == binding.remote.name) or (
        c.model == binding.model and c.runtime == binding.runtime)), 0)
    for cand in role.use[chosen:]:
        if cand.remote:
            chain.append(remote_upstream(decl.remote[cand.remote]))
            continue
        rt = runtimes.get(cand.runtime)
        served = next((m for m in rt.models if m.model.name == cand.model and binding.role in m.roles),
                      next((m for m in rt.models if m.model.name == cand.model), None)) if rt else None
        if served is not None:
            chain.append(Upstream(f"{cand.model} on {rt.name}", rt.model_id(served),
                                  rt.backend.openai_url(rt.port, rt.decl.host), rt.decl.api_key_env))
    return chain


def remote_upstream(remote: RemoteDecl) -> Upstream:
    """A remote model as a gateway calls it (OpenAI's API at its provider's base URL)."""
    base = remote.base_url or ("https://api.openai.com/v1" if remote.provider == "openai" else "")
    if remote.provider == "ollama" and base:  # LlamaFarm's ollama provider is given the server's root
        base = base.rstrip("/") + "/v1"
    return Upstream(f"remote {remote.name}", remote.model, base, remote.api_key_env)


def gateway_routes(decl: DeploymentDecl, roles: list[RoleBinding], runtimes: dict[str, RuntimePlan],
                   is_set: Callable[[str], bool], warnings: list[str]) -> tuple[Route, ...]:
    """Each served role as the gateway routes it: its own chain, then what `fallbacks` adds (a
    role's chain in turn, or a remote model), each upstream once. An upstream whose key variable
    is not set is left out (the gateway would refuse to start without it, for every role)."""
    bindings = {b.role: b for b in roles}
    own = {b.role: _upstreams(decl, decl.roles[b.role], b, runtimes) for b in roles}
    routes = []
    for b in roles:
        chain = list(own[b.role])
        for target in decl.gateway.fallbacks.get(b.role, ()):
            if target in bindings:
                chain += own[target]
            elif target in decl.remote:
                chain.append(remote_upstream(decl.remote[target]))
        unique = []
        for up in dict.fromkeys(chain):
            if up.api_key_env and not is_set(up.api_key_env):
                warnings.append(f"role {b.role}: {up.label} is left out of the gateway: {up.api_key_env} is not set "
                                "(set it and apply again)")
            else:
                unique.append(up)
        if b.remote:
            cap = decl.roles[b.role].declared_max_tokens or REMOTE_MAX_TOKENS
        else:
            served = next(m for m in runtimes[b.runtime].models if b.role in m.roles)
            cap = served.max_tokens(b.role)
        routes.append(Route(b.role, tuple(unique), cap))
    return tuple(routes)


def assign_ports(runtimes: dict[str, RuntimePlan], default_runtime: str | None, ask: PortAsk,
                 warnings: list[str]) -> tuple[int, dict[str, str], dict[str, str]]:
    """Set each runtime's port; -> (the supervisor's port, where each explicit port came from (for
    messages), the runtimes whose port a --port chose). A port a user chose with --port stays their
    choice on later applies (held by a stranger: exit 3, never moved)."""
    requests, sources_, asked = [], {}, {}
    unknown = [n for n in ask.args if n is not None and n not in runtimes]
    if unknown:
        raise BadInput(f"--port {unknown[0]}=...: no runtime {unknown[0]!r} in this plan; runtimes: "
                       f"{', '.join(runtimes) or 'none'}")
    if None in ask.args and default_runtime is None:
        raise BadInput("--port PORT: the default role is a remote model; name a runtime (--port NAME=PORT)")
    for rt in runtimes.values():
        if rt.external:  # its port is the one it already listens on
            continue
        explicit, source = rt.decl.port, f"deployment.runtimes.{rt.name}.port"
        if rt.name in ask.args:
            explicit, source = ask.args[rt.name], f"--port {rt.name}="
        elif rt.name == default_runtime and None in ask.args:
            explicit, source = ask.args[None], "--port"
        elif explicit is None and rt.name in ask.asked_before and ask.recorded.get(rt.name):
            explicit = ask.recorded[rt.name]
            source = f"an earlier {ask.asked_before[rt.name]} (recorded; --reselect forgets it)"
        requests.append(ports.PortRequest(rt.name, rt.backend.default_port, explicit, source))
        if explicit is not None:
            sources_[rt.name] = source
        if explicit and source.startswith(("--port", "an earlier --port")):
            asked[rt.name] = ask.asked_before.get(rt.name, source) if source.startswith("an earlier") else source
    requests.append(ports.PortRequest(ports.SUPERVISOR, ports.SUPERVISOR_DEFAULT_PORT, ask.supervisor,
                                      "supervisor.port"))
    if ask.supervisor:
        sources_[ports.SUPERVISOR] = "supervisor.port"
    assigned = ports.assign(requests, dict(ask.recorded), ask.usable)
    for rt in runtimes.values():
        rt.port = rt.external.port if rt.external else assigned[rt.name]
        if rt.decl.exposed:
            warnings.append(
                f"runtime {rt.name} listens on {rt.decl.host}:{rt.port}: reachable from other machines, every "
                f"request needs the key in ${rt.decl.api_key_env}")
    return assigned[ports.SUPERVISOR], sources_, asked


def _router_need(plan: RuntimePlan, need: Estimate, models_max: int) -> Estimate:
    """What one more model adds to a router's memory: the sum of its models_max largest models
    with it, less that sum without it (nothing when it is smaller than every resident one)."""
    totals = sorted((m.estimate.total for m in plan.models), reverse=True)
    before = sum(totals[:models_max])
    after = sum(sorted([*totals, need.total], reverse=True)[:models_max])
    grown = after - before
    return need if grown >= need.total else need.scaled(grown / need.total if need.total else 0)


def _pinned_candidate(role: RoleDecl, pin: dict | None) -> Candidate | None:
    if not pin:
        return None
    for cand in role.use:
        if (pin.get("remote") and cand.remote == pin["remote"]) or (
                cand.model and cand.model == pin.get("model") and cand.runtime == pin.get("runtime")):
            return cand
    return None


def _note(index: int, count: int) -> str:
    if index == -1:
        return "kept from the last apply (--reselect to try the preferred candidates again)"
    if index == 0:
        return "first choice"
    return f"candidate {index + 1} of {count}"


def _try_local(decl: DeploymentDecl, facts: dict, role: RoleDecl, cand: Candidate, plans: dict[str, RuntimePlan],
               pool: DevicePool, oracle: Oracle, kept: str | None) -> str | None:
    """Serve `role` with `cand` (committing memory and the runtime), or say why not."""
    rt_decl = decl.runtimes[cand.runtime]
    backend = get_backend(rt_decl.backend)
    model = decl.models[cand.model]
    ctx = cand.ctx_size or model.ctx_size or backend.default_ctx
    problem = backend.cannot_serve(model)
    if problem:
        return problem
    plan = plans.get(rt_decl.name)
    if plan is None:
        running = oracle.running(backend, rt_decl) if backend.adopts_running and rt_decl.install["method"] == "auto" \
            else None
        if running is not None:
            install = InstallSpec.make(backend.name, "external", rt_decl.variant, {"url": running.url})
        else:
            install = backend.install_spec(rt_decl, facts)
            problem = oracle.install_problem(install)
            if problem:
                return f"cannot be installed here: {problem}"
        plan = RuntimePlan(rt_decl, backend, install, pool, external=running)
    # A router serves each role as a model of its own (its own name and context), sharing nothing.
    existing = None if rt_decl.router else next((m for m in plan.models if m.model.name == model.name), None)
    if existing is None and backend.models_per_process and len(plan.models) >= backend.models_per_process \
            and not rt_decl.router:
        served = ", ".join(m.model.name for m in plan.models)
        return (f"{backend.name} serves {backend.models_per_process} model per process and {rt_decl.name} already "
                f"serves {served}; declare another runtime for it")
    if kept is not None:
        source = "kept"
    else:
        ok, why, source = oracle.available(model, backend, plan.external)
        if not ok:
            return why
    info = oracle.header(model)
    if existing is not None:  # another role of a model this runtime already serves: only the context may grow
        if ctx > existing.ctx_size:
            bigger = estimate(model, info, ctx)
            delta = Estimate(0, bigger.kv - existing.estimate.kv, 0, bigger.basis)
            if not pool.fits(plan.placement, delta):
                return "the larger context does not fit: " + pool.no_room(list(plan.placement.devices), delta)
            pool.commit(plan.placement, model.name, delta)
            existing.ctx_size, existing.estimate = ctx, bigger
        existing.roles.append(role.name)
        existing.declared_max_tokens[role.name] = role.declared_max_tokens
        existing.embeddings = existing.embeddings or role.embeddings
        return None
    need = estimate(model, info, ctx)
    if rt_decl.router:  # memory for the models_max largest resident at once, not for all of them
        need = _router_need(plan, need, rt_decl.models_max)
    if plan.placement is None:
        placement = pool.place(rt_decl.variant, rt_decl.gpus, backend.split, need)
        if isinstance(placement, str):
            return placement
    else:
        placement = plan.placement
        if not pool.fits(placement, need):
            return pool.no_room(list(placement.devices), need)
    pool.commit(placement, model.name, need)
    plan.placement = placement
    plan.models.append(ServedModel(model, [role.name], ctx, estimate(model, info, ctx), source, info, kept or "",
                                   role.embeddings, {role.name: role.declared_max_tokens}))
    plans[rt_decl.name] = plan
    return None
