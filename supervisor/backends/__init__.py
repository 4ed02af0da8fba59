"""The backend registry: the only place that maps a backend's name to its module.

Nothing outside supervisor/backends/ branches on a backend's name; it asks the backend object.
To add a backend, write a module with a Backend subclass and list it here (README: Extending).
"""

from __future__ import annotations

from ..errors import BadInput
from ..installers import external
from .base import Backend
from .lemonade import Lemonade
from .litellm import LiteLLM
from .llama_cpp_python import LlamaCppPython
from .llama_server import LlamaServer
from .ollama import Ollama
from .vllm import Vllm

REGISTERED = (LlamaServer, Ollama, Vllm, Lemonade, LiteLLM, LlamaCppPython)
BACKENDS: dict[str, Backend] = {cls.name: cls() for cls in REGISTERED}
for _backend in BACKENDS.values():  # the `external` method asks a running server through its backend
    external.register(_backend.name, _backend)


def get_backend(name: str, source: str = "backend", gateway: bool | None = None) -> Backend:
    """The backend named `name`; `gateway` True or False: only a gateway, or only a runtime backend
    (the error lists the names of that kind)."""
    backend = BACKENDS.get(name)
    if backend is None or (gateway is not None and backend.gateway != gateway):
        kind = "gateway" if gateway else "backend"
        known = sorted(n for n, b in BACKENDS.items() if gateway is None or b.gateway == gateway)
        raise BadInput(f"{source}: unknown {kind} {name!r}; known {kind}s: {', '.join(known)}")
    return backend
