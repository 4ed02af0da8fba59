"""ollama://[HOST/][NAMESPACE/]NAME[:TAG]: a model from an Ollama registry, pulled by the Ollama
backend itself (POST /api/pull). Reachable means the registry has its manifest: registry.ollama.ai
by default, the Ollama mirror in its place when one is configured (sources.Mirrors)."""

from __future__ import annotations

from .base import REACH_TIMEOUT, Source, mirrors
from .http import head

DEFAULT_REGISTRY = "registry.ollama.ai"  # the registry Ollama means when a name gives no host
DEFAULT_NAMESPACE = "library"
REGISTRY = f"https://{DEFAULT_REGISTRY}"


def parse_name(name: str) -> tuple[str, str, str, str]:
    """Ollama's `[host/][namespace/]model[:tag]` -> (host, namespace, model, tag) with its defaults."""
    rest, tag = name, "latest"
    last = rest.rsplit("/", 1)[-1]
    if ":" in last:
        rest, tag = rest[: len(rest) - len(last)] + last.split(":", 1)[0], last.split(":", 1)[1]
    parts = rest.split("/")
    model = parts[-1]
    namespace = parts[-2] if len(parts) >= 2 else DEFAULT_NAMESPACE
    host = "/".join(parts[:-2]) if len(parts) >= 3 else DEFAULT_REGISTRY
    return host, namespace, model, tag


def short_name(name: str) -> str:
    """The name as `ollama list` shows it (defaults left out): gemma3:270m, farmhand/x:latest."""
    host, namespace, model, tag = parse_name(name)
    prefix = "" if host == DEFAULT_REGISTRY else f"{host}/"
    prefix += "" if (host, namespace) == (DEFAULT_REGISTRY, DEFAULT_NAMESPACE) else f"{namespace}/"
    return f"{prefix}{model}:{tag}"


def manifest_url(uri: str) -> str:
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

        ok, why = head(manifest_url(uri), timeout)
        return ok, "ollama:" + why.split(":", 1)[1]
