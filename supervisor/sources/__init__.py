"""Where models and archives come from: one module per URI scheme, found here by scheme.

A source answers two questions: "could you deliver this right now?" (`reachable`, one quick
request, for planning) and "deliver it into this file" (`fetch`, for applying). Sources that
only a backend can deliver (ollama://, pulled through Ollama's own API) say so with
`delivers_file(uri)` False; the plan then hands the model to the backend instead of the store.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import BadInput, FarmhandError

REACH_TIMEOUT = 1.5


class SourceFailed(FarmhandError):
    """This source could not deliver; the next one may."""


class Source:
    scheme: str = ""
    offline: bool = False  # True: needs no network beyond a configured package index / local disk

    def delivers_file(self, uri: str) -> bool:
        """True when farmhand's store can hold what `uri` names; False when only a backend can
        (an Ollama registry name, a whole Hugging Face repo that vLLM reads)."""
        return True

    def reachable(self, uri: str, timeout: float = REACH_TIMEOUT) -> tuple[bool, str]:
        raise NotImplementedError

    def fetch(self, uri: str, partial: Path, *, size_hint: int, label: str, report, ledger=None) -> None:
        """Write the bytes of `uri` into `partial` (resuming what is there when it can). Helper
        processes are recorded in `ledger` while they run."""
        raise SourceFailed(f"{self.scheme}:// sources are pulled by their backend, not into the store")


def scheme_of(uri: str) -> str:
    return uri.split("://", 1)[0] if "://" in uri else ""


def get(uri: str) -> Source:
    from . import file, http, ollama, pip

    registry: dict[str, Source] = {s.scheme: s for s in (pip.PipSource(), http.HttpSource("https"),
                                                         http.HttpSource("http"), http.HfSource(),
                                                         file.FileSource(), ollama.OllamaSource())}
    try:
        return registry[scheme_of(uri)]
    except KeyError:
        raise BadInput(f"{uri}: unknown source scheme; known: {', '.join(sorted(registry))}") from None


def short_reason(exc: Exception) -> str:
    """A requests exception as a few words a person can act on."""
    text = str(exc)
    if "NameResolutionError" in text or "Name or service not known" in text:
        return "name does not resolve (offline?)"
    for marker in ("Connection refused", "timed out", "Network is unreachable"):
        if marker in text:
            return marker.lower()
    return type(exc).__name__
