"""The backend registry: the only place that maps a backend's name to its module.

Nothing outside supervisor/backends/ branches on a backend's name; it asks the backend object.
To add a backend, write a module with a Backend subclass and give it a line in REGISTERED
(README: Extending). A backend's module loads the first time a plan names it (registry.py).
"""

from __future__ import annotations

from ..errors import BadInput
from ..installers import external
from ..registry import Registry
from .base import Backend

# name (the class's `name`) -> "module:Backend class"
REGISTERED: dict[str, str] = {
    "llama-server": "llama_server:LlamaServer",
    "ollama": "ollama:Ollama",
    "vllm": "vllm:Vllm",
    "lemonade": "lemonade:Lemonade",
    "litellm": "litellm:LiteLLM",
    "llama-cpp-python": "llama_cpp_python:LlamaCppPython",
}
BACKENDS: Registry[Backend] = Registry(__name__, REGISTERED, key_attr="name")
external.register(BACKENDS)  # the `external` method asks a running server through its backend


def get_backend(name: str, source: str = "backend", gateway: bool | None = None) -> Backend:
    """The backend named `name`; `gateway` True or False: only a gateway, or only a runtime backend
    (the error lists the names of that kind)."""
    backend = BACKENDS[name] if name in BACKENDS else None
    if backend is None or (gateway is not None and backend.gateway != gateway):
        kind = "gateway" if gateway else "backend"
        known = sorted(n for n, b in BACKENDS.items() if gateway is None or b.gateway == gateway)
        raise BadInput(f"{source}: unknown {kind} {name!r}; known {kind}s: {', '.join(known)}")
    return backend
