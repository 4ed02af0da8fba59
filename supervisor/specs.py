"""What the supervisor runs: runtimes.json, written by apply, read by `farmhand run`.

One RuntimeSpec per runtime holds everything the supervisor needs to start, probe, restart
and stop it; the file is the only contract between the plan and the daemon. Secrets appear
only as ${env:VAR} references, resolved when the process is spawned.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from .policy import RestartPolicy
from .ports import LOOPBACK

LOG_MAX_BYTES = 10 << 20
LOG_BACKUPS = 3


@dataclass(frozen=True)
class RuntimeSpec:
    """One runtime as the supervisor runs it (runtimes.json): argv, env, port, probes, policies."""

    name: str
    backend: str
    argv: tuple[str, ...]
    port: int
    readiness_url: str
    env: tuple[tuple[str, str], ...] = ()
    # The defaults below are the one place they are written: from_json and the plan read them.
    readiness_expect: int = 200
    # A readiness probe with a body is a POST of it (vLLM: a one-token completion, since its
    # /health answers before the engine can compute); liveness then probes liveness_url.
    readiness_body: str = ""
    readiness_timeout_s: float = 2.0
    # The env var (of its own, resolved at spawn) whose value the readiness probe sends as a
    # Bearer token: a completion behind the runtime's API key. Never written anywhere.
    readiness_key_env: str = ""
    liveness_url: str = ""  # "" : the readiness URL
    models_url: str = ""  # a router's GET /models: which of its models are loaded now (status shows it)
    metrics_url: str = ""  # the runtime's own Prometheus metrics, passed through the supervisor's /metrics
    metrics_key_env: str = ""  # the env var (its own) whose value the metrics scrape sends as its Bearer key
    variant: str = ""
    roles: tuple[str, ...] = ()
    base_url: str | None = None
    stop_signal: str = "SIGTERM"
    grace_s: float = 10.0
    start_timeout_s: float = 120.0
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    # Liveness, once ready: a probe every interval; `misses` in a row and it is restarted.
    liveness_interval_s: float = 5.0
    liveness_timeout_s: float = 2.0
    liveness_misses: int = 3
    models: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    # Fingerprints of what it runs and serves (binary, model files): when a file is replaced,
    # the spec changes and the runtime is restarted onto the new file.
    identity: str = ""
    log_max_bytes: int = LOG_MAX_BYTES
    log_backups: int = LOG_BACKUPS

    def to_json(self) -> dict:
        return {"name": self.name, "backend": self.backend, "argv": list(self.argv), "env": dict(self.env),
                "port": self.port, "base_url": self.base_url,
                "readiness": {"url": self.readiness_url, "expect": self.readiness_expect,
                              **({"body": self.readiness_body, "timeout_s": self.readiness_timeout_s}
                                 if self.readiness_body else {}),
                              **({"key_env": self.readiness_key_env} if self.readiness_key_env else {})},
                "stop_signal": self.stop_signal, "grace_s": self.grace_s, "start_timeout_s": self.start_timeout_s,
                "restart": self.restart.to_json(),
                "liveness": {"interval_s": self.liveness_interval_s, "timeout_s": self.liveness_timeout_s,
                             "misses": self.liveness_misses, **({"url": self.liveness_url} if self.liveness_url else {})},
                "models": list(self.models), "devices": list(self.devices),
                **({"models_url": self.models_url} if self.models_url else {}),
                **({"metrics": {"url": self.metrics_url, **({"key_env": self.metrics_key_env}
                                                           if self.metrics_key_env else {})}}
                   if self.metrics_url else {}),
                **({"variant": self.variant} if self.variant else {}),
                **({"roles": list(self.roles)} if self.roles else {}),
                "identity": self.identity, "log_max_bytes": self.log_max_bytes, "log_backups": self.log_backups}

    @classmethod
    def from_json(cls, data: dict) -> RuntimeSpec:
        return cls(name=data["name"], backend=data.get("backend", "?"), argv=tuple(data["argv"]),
                   env=tuple(sorted((data.get("env") or {}).items())), port=int(data["port"]),
                   base_url=data.get("base_url"), readiness_url=data["readiness"]["url"],
                   readiness_expect=data["readiness"].get("expect", 200),
                   readiness_body=data["readiness"].get("body", ""),
                   readiness_timeout_s=float(data["readiness"].get("timeout_s", cls.readiness_timeout_s)),
                   readiness_key_env=data["readiness"].get("key_env", ""),
                   liveness_url=(data.get("liveness") or {}).get("url", ""),
                   stop_signal=data.get("stop_signal", "SIGTERM"), grace_s=float(data.get("grace_s", cls.grace_s)),
                   start_timeout_s=float(data.get("start_timeout_s", cls.start_timeout_s)),
                   restart=RestartPolicy.from_json(data.get("restart")),
                   liveness_interval_s=float((data.get("liveness") or {}).get("interval_s", cls.liveness_interval_s)),
                   liveness_timeout_s=float((data.get("liveness") or {}).get("timeout_s", cls.liveness_timeout_s)),
                   liveness_misses=int((data.get("liveness") or {}).get("misses", cls.liveness_misses)),
                   models=tuple(data.get("models") or ()), models_url=data.get("models_url", ""),
                   metrics_url=(data.get("metrics") or {}).get("url", ""),
                   metrics_key_env=(data.get("metrics") or {}).get("key_env", ""),
                   variant=data.get("variant", ""), roles=tuple(data.get("roles") or ()),
                   devices=tuple(data.get("devices") or ()), identity=data.get("identity", ""),
                   log_max_bytes=int(data.get("log_max_bytes", LOG_MAX_BYTES)),
                   log_backups=int(data.get("log_backups", LOG_BACKUPS)))


@dataclass(frozen=True)
class SupervisorSpec:
    """Everything the supervisor runs, and where its own /health listens."""

    runtimes: tuple[RuntimeSpec, ...]
    host: str = LOOPBACK
    port: int = 0  # the supervisor's /health; 0: any free port

    @property
    def digest(self) -> str:
        body = {"host": self.host, "port": self.port, "runtimes": [r.to_json() for r in self.runtimes]}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]

    def to_json(self) -> dict:
        return {"supervisor": {"host": self.host, "port": self.port},
                "runtimes": [r.to_json() for r in self.runtimes], "digest": self.digest}

    def text(self) -> str:
        return json.dumps(self.to_json(), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, data: dict) -> SupervisorSpec:
        sup = data.get("supervisor") or {}
        return cls(tuple(RuntimeSpec.from_json(r) for r in data.get("runtimes") or ()),
                   sup.get("host", LOOPBACK), int(sup.get("port", 0)))


# What a runtime inherits from the supervisor's environment: what a process needs to run, find
# its libraries and GPUs, and reach a proxy. Nothing else (HF_TOKEN, a cloud key, the caller's
# other secrets) unless the runtime declares it: env: {HF_TOKEN: "${env:HF_TOKEN}"}.
INHERITED_ENV = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "XDG_RUNTIME_DIR",
    "LD_LIBRARY_PATH", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
    "FARMHAND_HOME", "FARMHAND_SYSTEM",  # which home a process belongs to (status, tests, ps)
})
INHERITED_PREFIXES = ("LC_", "CUDA_", "NVIDIA_", "HIP_", "ROCR_", "ROCM_", "HSA_", "GPU_", "VK_", "OMP_", "MKL_",
                      "OPENBLAS_", "GGML_")


def inherited_env(environ: dict[str, str]) -> dict[str, str]:
    """The part of `environ` every runtime gets (INHERITED_ENV); its declared env goes on top."""
    return {k: v for k, v in environ.items() if k in INHERITED_ENV or k.startswith(INHERITED_PREFIXES)}
