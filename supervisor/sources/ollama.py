"""ollama://NAME:TAG: a model from Ollama's registry, pulled by the Ollama backend itself."""

from __future__ import annotations

from . import REACH_TIMEOUT, Source, short_reason

REGISTRY = "https://registry.ollama.ai"


def split(uri: str) -> tuple[str, str]:
    name, _, tag = uri[len("ollama://"):].partition(":")
    return name, tag or "latest"


class OllamaSource(Source):
    scheme = "ollama"

    def delivers_file(self, uri: str) -> bool:
        return False

    def reachable(self, uri: str, timeout: float = REACH_TIMEOUT) -> tuple[bool, str]:
        import requests

        name, tag = split(uri)
        if "/" not in name:
            name = f"library/{name}"
        try:
            resp = requests.head(f"{REGISTRY}/v2/{name}/manifests/{tag}", timeout=timeout, allow_redirects=True)
        except requests.RequestException as exc:
            return False, f"ollama: {short_reason(exc)}"
        if resp.status_code >= 400 and resp.status_code != 405:
            return False, f"ollama: HTTP {resp.status_code}"
        return True, "ollama: reachable"
