"""LiteLLM's proxy as the gateway (`deployment.gateway: litellm`): one OpenAI endpoint in front of
every role, holding every key, falling back along each role's candidates.

Install (method `pip`): PyPI's `litellm` into a venv of its own, the wheel checked against its
pinned sha256 (x86-64 and arm64), then the proxy's server dependencies at the versions pinned
below: PyPI has no `litellm-proxy` distribution for the `[proxy]` extra to pull, so the extra
cannot be installed as declared. Releases withdrawn after a compromise are refused by name.

It runs as `litellm --config FILE --host H --port P`. The config (written by the plan, no secret
in it) has one model group per role, named after the role, calling the role's chosen
deployment; each next candidate is a group `ROLE.fallback.N` listed in the router's
`fallbacks`, so a request whose local runtime is down is answered by the next one within the
same request. Keys are `os.environ/VAR` in the config and `${env:VAR}` in the spec's env,
resolved by the supervisor at spawn: never in argv, never in a file. Ready on
GET /health/readiness. Its admin UI is removed from the install; telemetry, docs and the remote
cost-map fetch are off, CORS
is the runtime's `cors_origins` without credentials; on loopback it runs without a master key
(LlamaFarm 0.0.34 cannot send one: it would send `${env:VAR}` literally), beyond loopback it
requires one (`master_key_env`).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..ports import LOOPBACK
from ..refs import env_ref
from .base import (
    USE_CORS,
    USE_HOST,
    USE_KEY,
    USE_PORT,
    Backend,
    Launch,
    LaunchRequest,
    ReadinessProbe,
    client_host,
)

PACKAGE, VERSION = "litellm", "1.110.2"
WHEELS = {  # PyPI's litellm 1.110.2 wheels (cp310-abi3, manylinux_2_28): the only files pip may install
    "x86_64": "9d94d1c7d524b6fd10c14f9c8c6c4f0ac31705f9964ac59dcfd8337c046d8917",
    "aarch64": "4e877371f0bb90623f112731c55a2d71acc3fbccbc57bfc7ef9346bd1af0f214",
}
ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}
# What `import litellm.proxy.proxy_server` needs beyond litellm's own dependencies (found by
# importing it in a clean venv), at the versions tested here.
PROXY_DEPENDENCIES = (
    "uvicorn==0.55.0", "uvloop==0.23.0", "fastapi==0.165.0", "starlette==1.10.0", "backoff==2.2.1",
    "websockets==17.4", "orjson==3.13.0", "redis==8.1.0", "APScheduler==3.11.3", "PyJWT==2.15.1",
    "cryptography==50.0.2", "semver==3.1.2", "python-multipart==0.0.34", "Expression==5.8.0",
    "fastapi-sso==0.23.0", "mcp==2.3.0", "soundfile==0.14.0",
)
# Releases pulled from PyPI after they were found to carry malware: never installed, whatever
# a profile asks.
REFUSED = {
    "1.107.0": "a compromised release, withdrawn from PyPI",
    "1.82.7": "a compromised release (a credential stealer), withdrawn from PyPI",
    "1.82.8": "a compromised release (a credential stealer), withdrawn from PyPI",
}
CONFIG = "litellm.yaml"
# The admin UI's files: removed after install, so the proxy (which mounts them only when they
# are there) serves no UI at all; DISABLE_ADMIN_UI alone leaves the pages served.
ADMIN_UI = "lib/{python}/site-packages/litellm/proxy/_experimental/out"
# Nothing leaves the host, nothing but the API is served, and no .env file is read.
QUIET_ENV = {"LITELLM_MODE": "PRODUCTION", "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY_DISABLED": "true",
             "DISABLE_ADMIN_UI": "True", "NO_DOCS": "True", "NO_REDOC": "True",
             "LITELLM_CORS_ALLOW_CREDENTIALS": "false", "DO_NOT_TRACK": "1"}
NO_KEY = "none"  # what a keyless local runtime is sent (the OpenAI client insists on one)


class LiteLLM(Backend):
    name = "litellm"
    gateway = True
    default_port = 11560
    executable = "litellm"
    variants = ("cpu",)
    install_methods = ("pip", "path")
    models_per_process = None
    start_timeout_s = 180.0  # importing the proxy takes 10-25 s on 2 cores
    grace_s = 10.0
    scratch_variants = ("cpu",)
    controlled_flags = {"--host": USE_HOST, "--port": USE_PORT, "--config": "farmhand writes it from the roles",
                        "--model": "declare roles", "--alias": "declare roles", "--api_base": "declare roles",
                        "--detailed_debug": "it logs request headers, keys included",
                        "--debug": "it logs request headers, keys included"}
    controlled_env = {"LITELLM_MASTER_KEY": USE_KEY, "LITELLM_CORS_ORIGINS": USE_CORS,
                      "LITELLM_CORS_ALLOW_CREDENTIALS": USE_CORS,
                      **{k: "set by farmhand (no telemetry, UI or remote fetches)" for k in QUIET_ENV
                         if not k.startswith("LITELLM_CORS")}}

    def refused_version(self, version: str | None) -> str | None:
        if version and str(version) in REFUSED:
            return (f"litellm {version} is refused: {REFUSED[str(version)]} (README: The gateway); use {VERSION}, "
                    "the release farmhand pins by digest")
        return None

    def install_params(self, method: str, variant: str, facts: dict, declared: dict) -> dict:
        if method != "pip":
            return super().install_params(method, variant, facts, declared)
        version = str(declared.get("version") or VERSION)
        arch = ARCH.get(str((facts.get("os") or {}).get("arch", "")).lower())
        params: dict = {"package": PACKAGE, "version": version, "binary": "bin/litellm",
                        "with_packages": list(PROXY_DEPENDENCIES), "remove_paths": [ADMIN_UI], "unsupported": None}
        if version == VERSION and arch in WHEELS:
            params["hashes"] = [WHEELS[arch]]
        return params

    def version_of(self, binary: Path) -> str | None:
        return self.version_of_package(binary.parent / "python", PACKAGE)

    def readiness_probe(self, port: int, host: str = LOOPBACK) -> ReadinessProbe:
        return ReadinessProbe(f"http://{client_host(host)}:{port}/health/readiness")

    def config_path(self, request: LaunchRequest) -> Path:
        return request.paths.runtime_file(request.name, CONFIG)

    def config(self, request: LaunchRequest) -> dict:
        """LiteLLM's config for the request's routes (a plain mapping; `files` writes it)."""
        model_list, fallbacks = [], []
        for route in request.routes:
            if not route.upstreams:
                continue
            groups = []
            for i, up in enumerate(route.upstreams):
                group = route.name if i == 0 else f"{route.name}.fallback.{i}"
                groups.append(group)
                params = {"model": f"openai/{up.model}", "api_base": up.api_base,
                          "api_key": f"os.environ/{up.api_key_env}" if up.api_key_env else NO_KEY}
                if route.max_tokens:
                    params["max_tokens"] = route.max_tokens
                model_list.append({"model_name": group, "litellm_params": params,
                                   "model_info": {"description": up.label}})
            if len(groups) > 1:
                fallbacks.append({groups[0]: groups[1:]})
        general: dict = {"disable_spend_logs": True}
        if request.decl.api_key_env:
            general["master_key"] = f"os.environ/{request.decl.api_key_env}"
        else:  # loopback only (declare refuses a host beyond it without a key): like every runtime here
            general["dangerously_permit_weak_or_unset_master_key"] = True
        # One failed call moves on to the next group at once: the supervisor, not the gateway,
        # brings a dead runtime back, and LiteLLM calls it again on the next request.
        router = {"num_retries": 0, "fallbacks": fallbacks}
        return {"model_list": model_list, "router_settings": router,
                "litellm_settings": {"num_retries": 0, "request_timeout": 600, "drop_params": True},
                "general_settings": general}

    def files(self, request: LaunchRequest) -> dict[Path, str]:
        header = "# Written by farmhand from the deployment's roles (no secrets: keys are os.environ/VAR).\n"
        return {self.config_path(request): header + json.dumps(self.config(request), indent=1) + "\n"}

    def launch(self, request: LaunchRequest) -> Launch:
        argv = [request.binary, "--config", str(self.config_path(request)), "--host", request.host,
                "--port", str(request.port), "--num_workers", "1", *request.decl.args]
        scratch = request.paths.runtime_scratch(request.name)
        env = dict(QUIET_ENV) | {"LITELLM_CORS_ORIGINS": ",".join(request.decl.cors_origins) or "null",
                                 "TMPDIR": str(scratch), "XDG_CACHE_HOME": str(scratch / "cache"),
                                 "TIKTOKEN_CACHE_DIR": str(scratch / "tiktoken"), "HF_HOME": str(scratch / "hf")}
        keys = sorted({up.api_key_env for route in request.routes for up in route.upstreams if up.api_key_env})
        env |= {var: env_ref(var) for var in keys}
        if request.decl.api_key_env:
            env["LITELLM_MASTER_KEY"] = env_ref(request.decl.api_key_env)
        env |= dict(request.decl.env)
        chains = [f"{r.name}: {' -> '.join(u.label for u in r.upstreams)}" for r in request.routes]
        return Launch(argv, env, tuple(f"gateway {c}" for c in chains))
