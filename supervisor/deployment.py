"""A deployment, as a profile (plus the user's overrides) declares it, in typed form.

A profile's `deployment` names the local runtimes that may run (backend, variant, install,
optional port), the roles LlamaFarm will see (`default`, `fast`, `coder`, ... or the user's
own), and remote models. Each role lists candidates in order of preference: a model of the
profile's `models` catalogue on one of the runtimes, or a remote model. selection.py later
picks one candidate per role for a given host; a runtime that no role picked is not installed.

    deployment:
      default_role: default
      runtimes:
        llama-server: {backend: llama-server, variant: cpu, port: 11550}
      roles:
        default:
          use: [{model: gemma3-270m, runtime: llama-server, ctx_size: 8192}]
          model_api_parameters: {temperature: 0.7}
        cloud:
          use: [{remote: gpt}]
      remote:
        gpt: {provider: openai, base_url: "https://api.openai.com/v1", model: gpt-4o-mini,
              api_key_env: OPENAI_API_KEY}
    models:
      gemma3-270m: {file: ..., size_bytes: ..., sha256: ..., sources: [pip://...]}

Runtimes, roles, remote models and the catalogue are mappings, so overrides merge into them
key by key (Helm values; `null` removes a key). This module holds the typed records only (pure:
backends read them); declare.py builds them from a profile and checks what the schema cannot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from . import sources
from .errors import BadInput
from .ports import GATEWAY as GATEWAY_RUNTIME
from .ports import LLAMAFARM_PORT, LOOPBACK, SUPERVISOR

ROLE_FIELDS = ("description", "prompts", "model_api_parameters", "mcp_servers", "instructor_mode", "extra_body",
               "tool_call_strategy", "tools", "keep_loaded", "encoder_config")
RESERVED_RUNTIME_NAMES = {SUPERVISOR: "the supervisor's own log and records",
                          GATEWAY_RUNTIME: "the gateway (deployment.gateway) in front of the runtimes"}
LLAMAFARM_ORIGIN = f"http://{LOOPBACK}:{LLAMAFARM_PORT}"  # LlamaFarm's own server: the one origin allowed by default
NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
ROUTER_MODELS_MAX = 4  # llama-server's own default for --models-max


@dataclass(frozen=True)
class ModelSpec:
    """One entry of a profile's model catalogue."""

    name: str
    size_bytes: int
    sources: tuple[str, ...]
    file: str | None = None
    sha256: str | None = None
    memory_gib: float | None = None  # declared need when loaded; used when no GGUF header is at hand
    ctx_size: int | None = None
    chat_template: str | None = None  # a llama.cpp built-in name; default: the file's own, else by architecture

    @property
    def filename(self) -> str:
        return self.file or f"{self.name}.gguf"

    @property
    def is_gguf(self) -> bool:
        """A GGUF file farmhand can hold (not a registry name or a whole Hugging Face repo)."""
        if self.file:
            return self.file.endswith(".gguf")

        return any(sources.get(uri).delivers_file(uri) for uri in self.sources)

    @classmethod
    def from_json(cls, name: str, data: dict) -> ModelSpec:
        return cls(name=name, size_bytes=data["size_bytes"], sources=tuple(data["sources"]), file=data.get("file"),
                   sha256=data.get("sha256"), memory_gib=data.get("memory_gib"), ctx_size=data.get("ctx_size"),
                   chat_template=data.get("chat_template"))


@dataclass(frozen=True)
class RuntimeDecl:
    """One runtime as the profile declares it, checked against its backend (declare.py)."""

    name: str
    backend: str
    variant: str
    install: dict  # method and its parameters, as declared (the backend fills in its defaults)
    port: int | None = None
    gpus: str | tuple[int, ...] = "auto"  # "auto" | "none" | "all" | GPU indices
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    api_key_env: str | None = None
    host: str = LOOPBACK  # where it listens; beyond loopback only with an API key, and `plan` warns
    cors_origins: tuple[str, ...] = (LLAMAFARM_ORIGIN,)
    router: bool = False  # one process serving each role by name, at most models_max loaded at once
    models_max: int = ROUTER_MODELS_MAX

    @property
    def exposed(self) -> bool:
        return not is_loopback(self.host)


def is_loopback(host: str) -> bool:
    return host == "localhost" or host == "::1" or host.startswith("127.")


@dataclass(frozen=True)
class Candidate:
    """One entry of a role's `use` list: a catalogue model on a runtime, or a remote model."""

    model: str | None = None  # a catalogue name, served by `runtime`
    runtime: str | None = None
    remote: str | None = None  # or a remote model's name
    ctx_size: int | None = None

    def describe(self) -> str:
        if self.remote:
            return f"remote {self.remote}"
        return f"{self.model} on {self.runtime}" + (f" (ctx {self.ctx_size})" if self.ctx_size else "")


@dataclass(frozen=True)
class RoleDecl:
    """A role (default, fast, embeddings, ...) and its candidates, best first."""

    name: str
    use: tuple[Candidate, ...]
    llamafarm: dict = field(default_factory=dict, compare=False)  # the LlamaFarm entry's own fields
    embeddings: bool = False  # declared `embeddings: true`: its runtime serves /v1/embeddings too

    @property
    def declared_max_tokens(self) -> int | None:
        """The profile's `model_api_parameters.max_tokens` for this role, if it sets one."""
        value = (self.llamafarm.get("model_api_parameters") or {}).get("max_tokens")
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


REMOTE_MAX_TOKENS = 1024  # a remote model's reply cap, when its role sets none


def default_max_tokens(ctx_size: int) -> int:
    """A role's reply cap when its profile sets none: a quarter of its context, 256 to 2048 tokens.
    Every LlamaFarm request and every llama-server slot is bounded (a base model asked without a
    cap writes until its context is full)."""
    return max(256, min(2048, ctx_size // 4))


@dataclass(frozen=True)
class RemoteDecl:
    """A cloud model a role may fall back to; its key only ever as the name of an env var."""

    name: str
    provider: str
    model: str
    base_url: str | None = None
    api_key_env: str | None = None


@dataclass(frozen=True)
class GatewayDecl:
    """`deployment.gateway`: one endpoint in front of every role (LiteLLM's proxy). Each role's
    candidates after the one chosen become its fallbacks, then the roles or remote models
    `fallbacks` adds; llamafarm.yaml then points every role at the gateway and holds no key."""

    runtime: RuntimeDecl  # named GATEWAY_RUNTIME; its api_key_env is the gateway's master key
    fallbacks: dict[str, tuple[str, ...]] = field(default_factory=dict)  # role -> roles / remote models after its own


@dataclass(frozen=True)
class DeploymentDecl:
    """A profile's deployment, typed and cross-checked: runtimes, roles, remote models, models."""

    profile: str
    runtimes: dict[str, RuntimeDecl]
    roles: dict[str, RoleDecl]
    remote: dict[str, RemoteDecl]
    models: dict[str, ModelSpec]
    default_role: str
    memory: dict = field(default_factory=dict, compare=False)
    gateway: GatewayDecl | None = None

    def ordered_roles(self) -> list[RoleDecl]:
        """The default role first (it gets memory first), then the others as declared."""
        return [self.roles[self.default_role]] + [r for n, r in self.roles.items() if n != self.default_role]


LEGACY_HINT = ("the farmhand 0.1 single-runtime form; since 0.2 a profile declares deployment.runtimes, "
               "deployment.roles and a models mapping (README: Configuring)")


def check_legacy(doc: dict, source: str) -> None:
    """Old overrides get one line that says what changed, not a schema error about `backend`."""
    if isinstance(doc, dict) and ("backend" in doc or isinstance(doc.get("models"), list)):
        key = "backend" if "backend" in doc else "models"
        raise BadInput(f"{source}: `{key}` is {LEGACY_HINT}")
