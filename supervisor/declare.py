"""From a schema-valid profile to a typed deployment (deployment.py's records), checking what
the schema cannot: references between runtimes, roles, remote models and the catalogue, backend
names, variants and install methods, the flags farmhand sets itself. It sits above the backend
registry, so the records it builds (which backends read) need not know the registry."""

from __future__ import annotations

from . import sources
from .backends import BACKENDS, get_backend
from .deployment import (
    GATEWAY_RUNTIME,
    LLAMAFARM_ORIGIN,
    LOOPBACK,
    NAME,
    RESERVED_RUNTIME_NAMES,
    ROLE_FIELDS,
    ROUTER_MODELS_MAX,
    Candidate,
    DeploymentDecl,
    GatewayDecl,
    ModelSpec,
    RemoteDecl,
    RoleDecl,
    RuntimeDecl,
    is_loopback,
)
from .errors import BadInput


def from_profile(profile: dict, source: str) -> DeploymentDecl:
    """The typed deployment of a schema-valid profile; BadInput names what does not fit together."""

    dep = profile["deployment"]
    models = {name: ModelSpec.from_json(name, data) for name, data in profile["models"].items() if data is not None}
    mirrors = sources.Mirrors.resolve(profile.get("mirrors"))
    for model in models.values():
        for uri in model.sources:
            sources.check_uri(uri, bool(model.sha256), f"{source}: models.{model.name}.sources", mirrors)
    runtimes: dict[str, RuntimeDecl] = {}
    for name, data in (dep.get("runtimes") or {}).items():
        if data is None:
            continue
        where = f"{source}: deployment.runtimes.{name}"
        if not NAME.match(name):
            raise BadInput(f"{where}: runtime names are lower-case letters, digits and . _ - (used in file names)")
        if name in RESERVED_RUNTIME_NAMES:
            raise BadInput(f"{where}: the name {name!r} is reserved for {RESERVED_RUNTIME_NAMES[name]}")
        if data.get("backend") in BACKENDS and BACKENDS[data["backend"]].gateway:
            raise BadInput(f"{where}.backend: {data['backend']} serves no model itself; declare it as "
                           f"deployment.gateway: {data['backend']} (in front of the runtimes)")
        runtimes[name] = _runtime(name, data, where)
    remote = {name: RemoteDecl(name=name, provider=d["provider"], model=d["model"], base_url=d.get("base_url"),
                               api_key_env=d.get("api_key_env"))
              for name, d in (dep.get("remote") or {}).items() if d is not None}
    roles: dict[str, RoleDecl] = {}
    for name, data in (dep.get("roles") or {}).items():
        if data is None:
            continue
        where = f"{source}: deployment.roles.{name}"
        use = tuple(_candidate(item, f"{where}.use[{i}]", runtimes, remote, models)
                    for i, item in enumerate(data["use"]))
        roles[name] = RoleDecl(name=name, use=use, llamafarm={k: data[k] for k in ROLE_FIELDS if k in data},
                               embeddings=bool(data.get("embeddings", False)))
    if not roles:
        raise BadInput(f"{source}: deployment.roles: no roles declared (at least `default`)")
    default_role = dep.get("default_role") or ("default" if "default" in roles else next(iter(roles)))
    if default_role not in roles:
        raise BadInput(f"{source}: deployment.default_role: no role {default_role!r}; known: {', '.join(roles)}")
    gateway = _gateway(dep.get("gateway"), f"{source}: deployment.gateway", roles, remote)
    return DeploymentDecl(profile=profile["name"], runtimes=runtimes, roles=roles, remote=remote, models=models,
                          default_role=default_role, memory=dict(profile.get("memory") or {}), gateway=gateway)


def _runtime(name: str, data: dict, where: str, key_field: str = "api_key_env", gateway: bool = False) -> RuntimeDecl:
    backend = get_backend(data["backend"], source=f"{where}.backend", gateway=gateway)
    variant = data.get("variant", backend.variants[0])
    if variant not in backend.variants:
        raise BadInput(f"{where}.variant: {backend.name} has no variant {variant!r}; "
                       f"known: {', '.join(backend.variants)}")
    install = dict(data.get("install") or {})
    method = install.setdefault("method", backend.install_methods[0])
    if method not in backend.install_methods:
        raise BadInput(f"{where}.install.method: {backend.name} cannot be installed by {method!r}; "
                       f"known: {', '.join(backend.install_methods)}")
    refused = backend.refused_version(install.get("version"))
    if refused:
        raise BadInput(f"{where}.install.version: {refused}")
    gpus = data.get("gpus", "auto")
    args, env = tuple(data.get("args") or ()), dict(data.get("env") or {})
    _check_controlled(backend, args, env, where)
    host = data.get("host", LOOPBACK)
    if not is_loopback(host):
        if not backend.supports_api_key:
            raise BadInput(f"{where}.host: {backend.name} has no API key, so it only listens on 127.0.0.1")
        if not data.get(key_field):
            raise BadInput(f"{where}.host: listening on {host} (beyond this machine) needs {key_field}")
    router = bool(data.get("router", False))
    if router and not backend.routes_models:
        routers = [n for n, b in BACKENDS.items() if b.routes_models]
        raise BadInput(f"{where}.router: {backend.name} has no router mode; backends with one: {', '.join(routers)}")
    if "models_max" in data and not router:
        raise BadInput(f"{where}.models_max: only for a router (router: true)")
    return RuntimeDecl(
        name=name, backend=backend.name, variant=variant, install=install, port=data.get("port"),
        gpus=tuple(gpus) if isinstance(gpus, list) else gpus, args=args, env=tuple(sorted(env.items())),
        api_key_env=data.get(key_field), host=host, cors_origins=tuple(data.get("cors_origins", [LLAMAFARM_ORIGIN])),
        router=router, models_max=int(data.get("models_max", ROUTER_MODELS_MAX)))


def _gateway(data, where: str, roles: dict[str, RoleDecl], remote: dict[str, RemoteDecl]) -> GatewayDecl | None:
    """`gateway: litellm` or `gateway: {backend: litellm, port, host, master_key_env, install, fallbacks}`."""
    if data is None or data is False:
        return None
    if isinstance(data, str):
        data = {"backend": data}
    runtime = _runtime(GATEWAY_RUNTIME, {k: v for k, v in data.items() if k != "fallbacks"}, where,
                       key_field="master_key_env", gateway=True)
    fallbacks: dict[str, tuple[str, ...]] = {}
    for role, targets in (data.get("fallbacks") or {}).items():
        if role not in roles:
            raise BadInput(f"{where}.fallbacks.{role}: no role {role!r}; known: {', '.join(roles)}")
        for target in targets:
            if target not in roles and target not in remote:
                raise BadInput(f"{where}.fallbacks.{role}: {target!r} is neither a role nor a remote model; known: "
                               f"{', '.join([*roles, *remote])}")
            if target == role:
                raise BadInput(f"{where}.fallbacks.{role}: a role cannot fall back to itself")
        fallbacks[role] = tuple(targets)
    cycle = _cycle(fallbacks)
    if cycle:
        raise BadInput(f"{where}.fallbacks: a fallback cycle ({' -> '.join(cycle)}): a failing request would go round "
                       "it; end each chain in a model that falls back to nothing")
    return GatewayDecl(runtime, fallbacks)


def _cycle(edges: dict[str, tuple[str, ...]]) -> list[str]:
    """A cycle among the role -> role fallbacks, as the path that closes it ([] when none)."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str]:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return []
        for nxt in edges.get(node, ()):
            found = visit(nxt, path + [node])
            if found:
                return found
        done.add(node)
        return []

    for start in edges:
        found = visit(start, [])
        if found:
            return found
    return []


def _check_controlled(backend, args: tuple[str, ...], env: dict, where: str) -> None:
    """Flags and variables farmhand sets itself (address, port, key, CORS, model) cannot be
    slipped in through args or env: `args: [--host, 0.0.0.0]` would expose a runtime silently."""
    for arg in args:
        flag = arg.split("=", 1)[0]
        if flag in backend.controlled_flags:
            raise BadInput(f"{where}.args: {flag} is set by farmhand; {backend.controlled_flags[flag]}")
    for name in env:
        if name in backend.controlled_env:
            raise BadInput(f"{where}.env: {name} is set by farmhand; {backend.controlled_env[name]}")


def _candidate(item, where: str, runtimes: dict, remote: dict, models: dict) -> Candidate:
    if isinstance(item, str):
        item = {"model": item}
    if "remote" in item:
        if item["remote"] not in remote:
            raise BadInput(f"{where}.remote: no remote model {item['remote']!r}; known: "
                           f"{', '.join(remote) or 'none (declare deployment.remote)'}")
        return Candidate(remote=item["remote"])
    if item["model"] not in models:
        raise BadInput(f"{where}.model: no model {item['model']!r} in the profile's models; known: {', '.join(models)}")
    runtime = item.get("runtime")
    if runtime is None:
        if len(runtimes) != 1:
            raise BadInput(f"{where}.runtime: required when the deployment has {len(runtimes)} runtimes "
                           f"({', '.join(runtimes) or 'none'})")
        runtime = next(iter(runtimes))
    elif runtime not in runtimes:
        raise BadInput(f"{where}.runtime: no runtime {runtime!r}; known: {', '.join(runtimes) or 'none'}")
    return Candidate(model=item["model"], runtime=runtime, ctx_size=item.get("ctx_size"))
