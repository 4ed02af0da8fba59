"""From a schema-valid profile to a typed deployment (deployment.py's records), checking what
the schema cannot: references between runtimes, roles, remote models and the catalogue, backend
names, variants and install methods, the flags farmhand sets itself. It sits above the backend
registry, so the records it builds (which backends read) need not know the registry."""

from __future__ import annotations

from . import sources
from .backends import get_backend
from .deployment import (
    LLAMAFARM_ORIGIN,
    LOOPBACK,
    NAME,
    RESERVED_RUNTIME_NAMES,
    ROLE_FIELDS,
    Candidate,
    DeploymentDecl,
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
        backend = get_backend(data["backend"], source=f"{where}.backend")
        variant = data.get("variant", backend.variants[0])
        if variant not in backend.variants:
            raise BadInput(f"{where}.variant: {backend.name} has no variant {variant!r}; "
                           f"known: {', '.join(backend.variants)}")
        install = dict(data.get("install") or {})
        method = install.setdefault("method", backend.install_methods[0])
        if method not in backend.install_methods:
            raise BadInput(f"{where}.install.method: {backend.name} cannot be installed by {method!r}; "
                           f"known: {', '.join(backend.install_methods)}")
        gpus = data.get("gpus", "auto")
        args, env = tuple(data.get("args") or ()), dict(data.get("env") or {})
        _check_controlled(backend, args, env, where)
        host = data.get("host", LOOPBACK)
        if not is_loopback(host):
            if not backend.supports_api_key:
                raise BadInput(f"{where}.host: {backend.name} has no API key, so it only listens on 127.0.0.1")
            if not data.get("api_key_env"):
                raise BadInput(f"{where}.host: listening on {host} (beyond this machine) needs api_key_env")
        runtimes[name] = RuntimeDecl(
            name=name, backend=backend.name, variant=variant, install=install, port=data.get("port"),
            gpus=tuple(gpus) if isinstance(gpus, list) else gpus, args=args, env=tuple(sorted(env.items())),
            api_key_env=data.get("api_key_env"), host=host,
            cors_origins=tuple(data.get("cors_origins", [LLAMAFARM_ORIGIN])))
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
    return DeploymentDecl(profile=profile["name"], runtimes=runtimes, roles=roles, remote=remote, models=models,
                          default_role=default_role, memory=dict(profile.get("memory") or {}))


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
