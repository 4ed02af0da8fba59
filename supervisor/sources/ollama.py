"""ollama://[HOST/][NAMESPACE/]NAME[:TAG]: a model from an Ollama registry, pulled by the Ollama
backend itself (POST /api/pull). Reachable means the registry has its manifest: registry.ollama.ai
by default, the Ollama mirror in its place when one is configured (sources.Mirrors)."""

from __future__ import annotations

from . import REACH_TIMEOUT, Source, mirrors

REGISTRY = "https://registry.ollama.ai"


def manifest_url(uri: str) -> str:
    from ..backends.ollama_api import DEFAULT_REGISTRY, parse_name

    host, namespace, model, tag = parse_name(uri[len("ollama://"):])
    base = (mirrors().ollama or REGISTRY) if host == DEFAULT_REGISTRY else f"https://{host}"
    return f"{base}/v2/{namespace}/{model}/manifests/{tag}"


class OllamaSource(Source):
    scheme = "ollama"

    def delivers_file(self, uri: str) -> bool:
        return False

    def describe(self, uri: str) -> str:
        mirror = mirrors().ollama
        return uri + (f" via the Ollama mirror {mirror}" if mirror and manifest_url(uri).startswith(mirror) else "")

    def reachable(self, uri: str, timeout: float = REACH_TIMEOUT) -> tuple[bool, str]:
        from .http import head

        ok, why = head(manifest_url(uri), timeout)
        return ok, "ollama:" + why.split(":", 1)[1]
