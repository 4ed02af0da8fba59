"""What every source shares: the Source contract, mirrors and proxies, the URI checks."""


from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from ..errors import BadInput, FarmhandError
from ..fetcher import short_reason  # noqa: F401 - sources word their failures the fetcher's way

REACH_TIMEOUT = 1.5


@dataclass(frozen=True)
class Mirrors:
    """A base URL per source kind, for sites without the internet: `mirrors:` in the profile or
    overrides, else FARMHAND_MIRROR_HF / _HTTPS / _OLLAMA. An hf mirror serves the Hugging Face
    API (HF_ENDPOINT); an https mirror serves `<base>/<host>/<path>` for https://<host>/<path>
    (release archives, model files); an ollama mirror is a registry speaking Ollama's registry
    API (/v2/<namespace>/<model>/manifests/<tag>) in place of registry.ollama.ai."""

    hf: str | None = None
    https: str | None = None
    ollama: str | None = None

    @classmethod
    def resolve(cls, declared: dict | None = None) -> Mirrors:
        declared = declared or {}

        def pick(kind: str) -> str | None:
            value = (declared.get(kind) or os.environ.get(f"FARMHAND_MIRROR_{kind.upper()}") or "").rstrip("/") or None
            if value is not None:
                parsed = urlparse(value) if isinstance(value, str) else None
                if parsed is None or parsed.scheme not in ("http", "https") or not parsed.hostname:
                    where = f"mirrors.{kind}" if declared.get(kind) else f"FARMHAND_MIRROR_{kind.upper()}"
                    raise BadInput(f"{where}: {value!r} is not a mirror URL (http:// or https:// and a host)")
            return value

        ollama = pick("ollama")
        if ollama and urlparse(ollama).path.strip("/"):
            where = "mirrors.ollama" if declared.get("ollama") else "FARMHAND_MIRROR_OLLAMA"
            raise BadInput(f"{where}: {ollama}: an Ollama registry mirror is a registry root (scheme://host[:port]): "
                           "Ollama names a registry by its host only")
        return cls(hf=pick("hf"), https=pick("https"), ollama=ollama)

    def hosts(self) -> set[str]:
        return {urlparse(u).hostname for u in (self.hf, self.https, self.ollama) if u}


try:
    _mirrors = Mirrors.resolve()
except BadInput:  # said, with the fix, when a command resolves them (plan.build); never at import
    _mirrors = Mirrors()


def configure(mirrors: Mirrors) -> None:
    """The mirrors this command uses: set once, by the plan, when the profile is known (or by a
    command that fetches without one). The sources read them; backends get them in their
    LaunchRequest."""
    global _mirrors
    _mirrors = mirrors


def mirrors() -> Mirrors:
    return _mirrors


def is_loopback(host: str | None) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def via(url: str) -> str:
    """How a request to `url` leaves this machine: the proxy from HTTPS_PROXY/HTTP_PROXY/NO_PROXY."""
    import urllib.request

    proxies = urllib.request.getproxies()
    host = urlparse(url).hostname or ""
    if urllib.request.proxy_bypass(host) or is_loopback(host):
        return "direct"
    proxy = proxies.get(urlparse(url).scheme)
    return f"proxy {proxy}" if proxy else "direct"


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

    def fetch(self, uri: str, dest: Path, expect, *, label: str, report, ledger=None):
        """Bring `uri` to `dest`, verified against `expect` (fetcher.Expect); a fetcher.Result.
        Helper processes are recorded in `ledger` while they run."""
        raise SourceFailed(f"{self.scheme}:// sources are pulled by their backend, not into the store")

    def describe(self, uri: str) -> str:
        """Where a fetch of `uri` will really go (mirror, proxy), for `plan`."""
        return uri

    def check(self, uri: str) -> None:
        """BadInput when `uri` is not a well-formed reference for this scheme."""


def scheme_of(uri: str) -> str:
    return uri.split("://", 1)[0] if "://" in uri else ""


def check_transport(uri: str, has_sha256: bool, where: str, mirrors_: Mirrors | None = None) -> None:
    """What a profile may ask for: https and http downloads only with a sha256 to check them
    against, and plain http only from this machine or a named mirror."""
    scheme = scheme_of(uri)
    if scheme in ("https", "http") and not has_sha256:
        raise BadInput(f"{where}: {uri}: a download needs a sha256 to be verified against; add sha256")
    if scheme == "http":
        host = urlparse(uri).hostname
        if not (is_loopback(host) or host in (mirrors_ or _mirrors).hosts()):
            raise BadInput(f"{where}: {uri}: plain http only from this machine or a named mirror (mirrors:); "
                           "use https")
