"""Where models and archives come from: one module per URI scheme, found here by scheme.

A source answers two questions: "could you deliver this right now?" (`reachable`, one quick
request, for planning) and "deliver it into this file" (`fetch`, for applying). Sources that
only a backend can deliver (ollama://, pulled through Ollama's own API) say so with
`delivers_file(uri)` False; the plan then hands the model to the backend instead of the store.
"""

from __future__ import annotations

from ..errors import BadInput
from . import file, hf, http, lemonade, ollama, pip
from .base import (  # noqa: F401 - the sources' shared contract, named where callers look for it
    REACH_TIMEOUT,
    Mirrors,
    Source,
    SourceFailed,
    check_transport,
    configure,
    is_loopback,
    mirrors,
    scheme_of,
    short_reason,
    via,
)


def get(uri: str) -> Source:
    registry: dict[str, Source] = {s.scheme: s for s in (pip.PipSource(), http.HttpSource("https"),
                                                         http.HttpSource("http"), hf.HfSource(),
                                                         file.FileSource(), ollama.OllamaSource(),
                                                         lemonade.LemonadeSource())}
    try:
        return registry[scheme_of(uri)]
    except KeyError:
        raise BadInput(f"{uri}: unknown source scheme; known: {', '.join(sorted(registry))}") from None


def check_uri(uri: str, has_sha256: bool, where: str, mirrors_: Mirrors | None = None) -> None:
    """What a profile (or `models pull`) may ask for: a reference its scheme can parse, https
    and http downloads only with a sha256 to check them against, and plain http only from this
    machine or a named mirror."""
    try:
        get(uri).check(uri)
    except BadInput as exc:
        raise BadInput(f"{where}: {exc}") from None
    check_transport(uri, has_sha256, where, mirrors_)
