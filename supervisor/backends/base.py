"""What every backend module provides: one place for each fact about a backend.

A backend knows its default port, which variants and install methods it has (and the
parameters of each), which models it can serve and from which sources, how one model spans
GPUs, how it is started on a port (argv + env), its readiness probe, how it stops, which
LlamaFarm provider speaks to it, and (if it has its own store) how to pull into it. It holds
nothing else: installing is installers/'s job, choosing and placing models is selection's.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .. import sources
from ..deployment import ModelSpec, RuntimeDecl
from ..errors import EnvironmentProblem, FarmhandError
from ..gguf import GGUFInfo
from ..installers import InstallSpec
from ..memory import Device, Placement
from ..paths import Paths
from ..ports import (
    LOOPBACK,
    client_host,  # noqa: F401 - backends' modules take it from here
)


class ServedModel(Protocol):
    """What a backend may read of a model the plan serves (selection.ServedModel and LaunchModel
    are both one): enough to name it and to pull or import it."""

    model: ModelSpec
    info: GGUFInfo | None

    @property
    def effective_source(self) -> str: ...

    @property
    def via_store(self) -> bool: ...


@dataclass(frozen=True)
class LaunchModel:
    """One model as a runtime is told to serve it, with the GGUF header as it is on disk now."""

    model: ModelSpec
    roles: tuple[str, ...]
    ctx_size: int
    info: GGUFInfo | None
    embeddings: bool  # a role it serves declared `embeddings: true`
    effective_source: str
    via_store: bool
    kv_bytes: int = 0  # the memory plan's KV cache for it at ctx_size (0: unknown)
    max_tokens: int = 0  # the largest reply cap of the roles it serves (0: none)


@dataclass(frozen=True)
class Upstream:
    """One OpenAI-compatible endpoint a gateway route may call: a local runtime or a remote model."""

    label: str  # for people: "gemma3-270m on llama-server", "remote gpt"
    model: str  # the model name that endpoint knows
    api_base: str  # ends where the OpenAI paths begin (.../v1)
    api_key_env: str | None = None  # the variable holding its key (never the key)


@dataclass(frozen=True)
class Route:
    """A name the gateway answers to (a role), and whom it calls: the first upstream, then each
    next one when the one before fails."""

    name: str
    upstreams: tuple[Upstream, ...]
    max_tokens: int = 0


@dataclass(frozen=True)
class LaunchRequest:
    """Everything a backend needs to start one runtime, decided by the plan: the backend turns it
    into argv, env and a probe, and sees nothing of the planner."""

    name: str
    decl: RuntimeDecl
    binary: str
    port: int
    models: tuple[LaunchModel, ...]
    devices: tuple[Device, ...]
    placement: Placement | None
    gpu_share: float | None  # the least share of its GPUs the memory plan grants it (None: no GPU)
    paths: Paths
    mirrors: sources.Mirrors = sources.Mirrors()  # the site's mirrors, for backends that download themselves
    routes: tuple[Route, ...] = ()  # a gateway's: each role and whom it calls

    @property
    def host(self) -> str:
        return self.decl.host


USE_HOST = "use deployment.runtimes.NAME.host (beyond 127.0.0.1 it needs api_key_env)"
USE_PORT = "use deployment.runtimes.NAME.port or --port"
USE_KEY = "use deployment.runtimes.NAME.api_key_env (the key stays in the environment)"
USE_CORS = "use deployment.runtimes.NAME.cors_origins"
USE_ROLES = "declare models and roles in the deployment"
USE_NO_PATHS = ("a flag that reads, writes or fetches files is not passed through args: farmhand keeps a runtime's "
                "files in its own directories (declare models in the profile)")

VISIBLE_DEVICES = {  # how each vendor's runtime libraries are told which GPUs to use
    "nvidia": {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "{ids}"},
    "amd": {"ROCR_VISIBLE_DEVICES": "{ids}"},
}


@dataclass(frozen=True)
class ReadinessProbe:
    """HTTP GET `url` answering `expect` means ready (503 and refused connections mean not yet);
    with a `body`, a POST of it (a real completion) means ready, and `liveness_url` is probed
    once it is running."""

    url: str
    expect: int = 200
    body: str = ""
    timeout_s: float = 2.0
    liveness_url: str = ""
    key_env: str = ""  # the runtime's env var holding its API key, sent as a Bearer token with `body`


@dataclass(frozen=True)
class RunningServer:
    """A server of this backend that farmhand did not start, answering at `url`: used, never managed."""

    url: str
    port: int
    version: str


class NotAnswering(FarmhandError):
    """A backend's server does not answer (not started yet, or gone)."""


class InstallRejected(EnvironmentProblem):
    """An install that completed but does not work here (a GPU build that sees no GPU)."""


class ModelStore:
    """A backend's own model store, reached through its running server (own_store backends)."""

    def present(self) -> dict[str, str]:
        """{model id: digest} of what the store holds; raises NotAnswering when the server is down."""
        raise NotImplementedError

    def loaded(self) -> set[str]:
        raise NotImplementedError

    def pull(self, served: ServedModel, report) -> str:
        """Have the backend fetch the model by its own name; a line saying what happened."""
        raise NotImplementedError

    def import_file(self, served: ServedModel, path: Path, sha256: str, report) -> str:
        """Put a file from farmhand's store into the backend's store."""
        raise NotImplementedError

    def load(self, name: str) -> None:
        raise NotImplementedError


@dataclass
class Launch:
    """What a backend starts for a LaunchRequest: argv and env, and notes for the plan to show."""

    argv: list[str]
    env: dict[str, str]
    notes: tuple[str, ...] = ()  # what the plan should tell about choices made here


class Backend:
    name: str = ""
    provider: str = "openai"  # LlamaFarm provider that talks to this backend
    default_port: int = 0
    stop_signal: str = "SIGTERM"
    grace_s: float = 10.0
    start_timeout_s: float = 120.0
    executable: str = ""
    variants: tuple[str, ...] = ("cpu",)
    install_methods: tuple[str, ...] = ("path",)  # the first is the default
    adopts_running: bool = False  # method `auto` uses a server of this backend already running here
    service: str = ""  # the systemd unit its packages install (for "start it again" advice)
    models_per_process: int | None = 1  # None: any number (it loads and unloads on demand)
    split: str | None = None  # how one model spans GPUs: "layer" | "tensor" | "scheduler"
    default_ctx: int = 4096
    own_store: bool = False  # models are pulled or imported into the backend's own store
    reads_hf_cache: bool = False  # serves whole Hugging Face repos that farmhand fetches into HF_HOME
    # Variants that write temporaries and caches: into paths.runtime_scratch(name), made by the plan.
    scratch_variants: tuple[str, ...] = ()
    supports_api_key: bool = True
    gateway: bool = False  # serves no model itself: routes each role to the runtimes and remote models
    routes_models: bool = False  # has a router mode (`router: true`): one process, a model per role by name
    # Flags and env vars farmhand sets itself, with what to use instead (refused in args/env).
    controlled_flags: dict[str, str] = {}
    controlled_env: dict[str, str] = {}

    # --- installation -----------------------------------------------------------------------
    def resolve_method(self, method: str, facts: dict) -> str:
        """The install method `auto` stands for on this host (backends that offer `auto`; a
        server already running was adopted before this): the executable on PATH, else the
        first method that installs one."""
        if method != "auto":
            return method
        if (facts.get("tools") or {}).get(self.executable):
            return "path"
        return next(m for m in self.install_methods if m not in ("auto", "path"))

    def install_params(self, method: str, variant: str, facts: dict, declared: dict) -> dict:
        """This backend's parameters for an install method on this host (the user's install
        settings, `declared`, override them)."""
        return {"executable": self.executable} if method == "path" else {}

    def install_spec(self, decl: RuntimeDecl, facts: dict | None = None) -> InstallSpec:
        facts = facts or {}
        declared = {k: v for k, v in decl.install.items() if k != "method"}
        method = self.resolve_method(decl.install["method"], facts)
        params = self.install_params(method, decl.variant, facts, declared) | declared
        return InstallSpec.make(self.name, method, decl.variant, params)

    def refused_version(self, version: str | None) -> str | None:
        """Why farmhand will not install `version` of this backend (a withdrawn release), or None."""
        return None

    def start_advice(self) -> str:
        return f"systemctl start {self.service or self.name}"

    def running_version(self, url: str) -> str | None:
        """For backends that adopt a running server: its version when one answers at `url`."""
        return None

    def version_of(self, binary: Path) -> str | None:
        """The installed version, from `BINARY --version` (None when it cannot tell)."""
        try:
            out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30,
                                 stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            return None
        text = (out.stdout + out.stderr).strip()
        return self.parse_version(text) if out.returncode == 0 and text else None

    def version_of_package(self, python: Path, package: str) -> str | None:
        """For a backend run as `python -m ...`: the installed version of `package` in that venv."""
        try:
            out = subprocess.run([str(python), "-c", "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))",
                                  package], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() or None if out.returncode == 0 else None

    def parse_version(self, text: str) -> str:
        return text.splitlines()[-1][:80]

    def verify_install(self, binary: Path, variant: str) -> str | None:
        """After an install: raise InstallRejected when it cannot work here (a GPU variant that
        sees no GPU); else None or a line saying what it sees."""
        return None

    # --- models -----------------------------------------------------------------------------
    def usable_sources(self, model: ModelSpec) -> list[str]:
        """The sources of `model` this backend can be given, in the model's order of preference."""
        return [uri for uri in model.sources if sources.get(uri).delivers_file(uri)] if model.is_gguf else []

    def cannot_serve(self, model: ModelSpec) -> str | None:
        if not self.usable_sources(model):
            return f"{self.name} cannot serve {model.name} from {', '.join(model.sources)}"
        return None

    def pull_problem(self) -> str | None:
        """For own-store backends: why farmhand cannot put models into this store (None: it can)."""
        return None

    def model_id(self, served: ServedModel) -> str:
        """The model name clients send (the `model` field in llamafarm.yaml)."""
        return served.model.name

    def store_name(self, model: ModelSpec, source: str) -> str:
        """own_store backends: the name `model` has in their store when it came from `source`."""
        return model.name

    def model_store(self, url: str) -> ModelStore | None:
        """own_store backends: their store, through the server at `url`."""
        return None

    def store_dir(self, paths: Paths) -> Path | None:
        """own_store backends run by farmhand: where their store lives inside farmhand's."""
        return None

    # --- running ----------------------------------------------------------------------------
    def base_url(self, port: int, host: str = LOOPBACK) -> str:
        """What llamafarm.yaml's base_url says for a model served on `port`."""
        return f"http://{client_host(host)}:{port}/v1"

    def openai_url(self, port: int, host: str = LOOPBACK) -> str:
        """Where its OpenAI-compatible API begins (what a gateway calls): base_url unless the
        LlamaFarm provider speaks another API."""
        return self.base_url(port, host)

    def readiness_probe(self, port: int, host: str = LOOPBACK) -> ReadinessProbe:
        raise NotImplementedError

    def readiness(self, request: LaunchRequest) -> ReadinessProbe:
        """The probe for this launch (a backend whose readiness needs a model name overrides it)."""
        return self.readiness_probe(request.port, request.host)

    def launch(self, request: LaunchRequest) -> Launch:
        raise NotImplementedError

    def models_url(self, request: LaunchRequest) -> str:
        """Where a router lists its models and which are loaded ("" : not a router)."""
        return ""

    def metrics_url(self, request: LaunchRequest) -> str:
        """Where the runtime serves its own Prometheus metrics ("" : it does not)."""
        return ""

    def metrics_key_env(self, request: LaunchRequest) -> str:
        """The runtime's env var holding the key its metrics need ("" : none)."""
        return ""

    def files(self, request: LaunchRequest) -> dict[Path, str]:
        """Files the runtime reads, written by the plan before it starts (a gateway's config):
        path -> text. Their content is part of the spec's identity: a change restarts it."""
        return {}

    def visible_devices(self, request: LaunchRequest) -> dict[str, str]:
        """Env that pins a GPU runtime to the devices the plan gave it."""
        gpus = [d for d in request.devices if d.kind == "gpu"]
        if not gpus:
            return {}
        env = VISIBLE_DEVICES.get(gpus[0].vendor, {})
        ids = ",".join(str(d.index) for d in gpus)
        return {k: v.format(ids=ids) for k, v in env.items()}

    def api_key_env(self, request: LaunchRequest) -> dict[str, str]:
        """The runtime's API key as an env var the backend reads; the spec holds only the
        ${env:VAR} reference, resolved by the supervisor at spawn (never argv, never a file)."""
        return {}
