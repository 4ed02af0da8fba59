"""The backend registry: the only place that maps a backend's name to its module.

Nothing outside supervisor/backends/ branches on a backend's name; it asks the backend object.
To add a backend, write a module with a Backend subclass and list it here (README: Extending).
"""

from __future__ import annotations

from ..errors import BadInput
from ..installers import external
from .base import Backend
from .lemonade import Lemonade
from .llama_server import LlamaServer
from .ollama import Ollama
from .vllm import Vllm

BACKENDS: dict[str, Backend] = {b.name: b for b in (LlamaServer(), Ollama(), Vllm(), Lemonade())}
for _backend in BACKENDS.values():  # the `external` method asks a running server through its backend
    external.register(_backend.name, _backend)


def get_backend(name: str, source: str = "backend") -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise BadInput(f"{source}: unknown backend {name!r}; known backends: {', '.join(sorted(BACKENDS))}") from None
