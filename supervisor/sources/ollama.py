"""ollama://NAME:TAG: a model from Ollama's registry, pulled by the Ollama backend itself."""

from __future__ import annotations

from . import REACH_TIMEOUT, Source

REGISTRY = "https://registry.ollama.ai"


def split(uri: str) -> tuple[str, str]:
    name, _, tag = uri[len("ollama://"):].partition(":")
    return name, tag or "latest"


class OllamaSource(Source):
    scheme = "ollama"

    def delivers_file(self, uri: str) -> bool:
        return False

    def reachable(self, uri: str, timeout: float = REACH_TIMEOUT) -> tuple[bool, str]:
        from .http import head

        name, tag = split(uri)
        if "/" not in name:
            name = f"library/{name}"
        ok, why = head(f"{REGISTRY}/v2/{name}/manifests/{tag}", timeout)
        return ok, "ollama:" + why.split(":", 1)[1]
