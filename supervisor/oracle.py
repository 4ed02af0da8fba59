"""The live Oracle: the world as a plan on this host sees it (the store, the sources or the bundle
being installed, the installers, servers already running here), and the GGUF headers it reads,
memoised by file fingerprint or URL. selection.py asks it; tests give selection their own.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from . import gguf, installers, memo, portowners, ports, sources, stepids, store
from .backends import Backend, get_backend
from .backends.base import RunningServer
from .deployment import ModelSpec, RuntimeDecl
from .errors import EnvironmentProblem, FarmhandError
from .ledger import Ledger
from .paths import Paths
from .selection import Oracle
from .sources import hf

if TYPE_CHECKING:  # annotations only: a bundle's reader loads for `apply --bundle` alone
    from .bundle import Bundle


def make_oracle(paths: Paths, ledger: Ledger, facts: dict, check_sources: bool = True, live: bool = True,
                reselect: bool = False, port_args: dict | None = None, offline: Bundle | None = None) -> Oracle:
    """The world as a live plan sees it: the store, the sources (or only `offline`, the bundle
    being installed), the installers, the servers already running here (not for a runtime given
    a port of its own: that asks for farmhand's)."""
    held: dict[str, dict[str, str]] = {}

    def in_server(backend: Backend, server: RunningServer) -> dict[str, str]:
        if server.url not in held:
            try:
                held[server.url] = backend.model_store(server.url).present()
            except FarmhandError:
                held[server.url] = {}
        return held[server.url]

    def available(model: ModelSpec, backend: Backend, server: RunningServer | None = None) -> tuple[bool, str, str]:
        usable = backend.usable_sources(model)
        file_based = [u for u in usable if sources.get(u).delivers_file(u)]
        if file_based and store.in_store(paths.models, model, ledger.artifact(stepids.model(model.name))):
            return True, "in store", "store"
        if offline is not None:  # installing from a bundle: what it holds, and no other source is asked
            if file_based and offline.model_member(model.sha256):
                return True, f"in {offline.path.name}", file_based[0]  # store.fetch reads the bundle first
            return False, f"not in {offline.path.name} (a bundle install fetches nothing)", ""
        if server is not None:  # a running server may hold it already: no registry needed
            for uri in usable:
                if uri not in file_based and backend.store_name(model, uri) in in_server(backend, server):
                    return True, f"already in the {backend.name} at {server.url}", uri
        reasons = []
        for uri in usable:
            ok, why = sources.get(uri).reachable(uri) if check_sources else (True, "not checked")
            if ok:
                return True, why, uri
            reasons.append(why)
        return False, "no source reachable (" + "; ".join(reasons) + ")", ""

    def install_problem(spec: installers.InstallSpec) -> str | None:
        backend = get_backend(spec.backend)
        return installers.problem_of(spec, facts.get("tools"), offline) or (
            backend.pull_problem() if backend.own_store else None)

    def running(backend: Backend, decl: RuntimeDecl) -> RunningServer | None:
        if decl.port is not None or decl.name in (port_args or {}) or None in (port_args or {}):
            return None  # a port of its own asks for farmhand's own runtime
        pinned = None if reselect else ledger.runtime_record(decl.name)
        if pinned and pinned.get("external"):
            url = pinned["external"]
            version = backend.running_version(url)
            if version:
                return RunningServer(url, int(url.rsplit(":", 1)[-1]), version)
            # Relied on since it was adopted: a second Ollama (or another profile) in its place
            # would surprise more than this error does.

            raise EnvironmentProblem(
                f"the {backend.name} at {url} that runtime {decl.name} uses (farmhand did not start it) does not "
                f"answer: start it again ({backend.start_advice()}), or re-run with --reselect to let "
                f"farmhand install its own; nothing was changed")
        if pinned or not live:  # farmhand ran its own last time: keep doing so
            return None
        port = backend.default_port
        if ports.is_free(port) or portowners.PortCheck(paths).holder_is_ours(port):
            return None
        url = f"http://127.0.0.1:{port}"
        version = backend.running_version(url)
        return RunningServer(url, port, version) if version else None

    return Oracle(available=available,
                  header=lambda model: model_header(paths, model, allow_network=check_sources),
                  install_problem=install_problem, running=running)


def model_header(paths: Paths, model: ModelSpec, allow_network: bool = True) -> gguf.GGUFInfo | None:
    """A GGUF model's header: from the store (memoised by the file's fingerprint), else from
    the first MB of an http(s)/hf source (memoised by URL; failures are not remembered)."""
    if not model.is_gguf:
        return None
    path = store.store_path(paths.models, model)
    try:
        st = path.stat()
    except OSError:
        st = None
    if st is not None:
        key = memo.digest("file", str(path), st.st_size, st.st_mtime_ns, st.st_ino)

        def parse():
            try:
                return gguf.read_file(path).to_json()
            except (gguf.GGUFError, OSError):
                return None

        data = memo.remember("gguf", key, parse)
        return gguf.GGUFInfo.from_json(data) if data else None
    for uri in model.sources:  # a local file source: its own header, as cheap as the store's
        if sources.scheme_of(uri) == "file":
            local = Path(uri[len("file://"):])
            try:
                return gguf.GGUFInfo.from_json(memo.remember("gguf", memo.digest("file", str(local),
                                               *_stat_key(local)), lambda f=local: gguf.read_file(f).to_json()))
            except (gguf.GGUFError, OSError):
                continue
    if not allow_network:
        return None
    for uri in model.sources:
        scheme = sources.scheme_of(uri)
        if scheme not in ("http", "https", "hf") or not sources.get(uri).delivers_file(uri):
            continue
        url = sources.get(uri).url(uri)
        headers = {}
        if scheme == "hf":
            from huggingface_hub.utils import build_hf_headers

            headers = build_hf_headers(token=hf.token())  # requests drops it on a redirect to the CDN
        key = memo.digest("url", url)
        data = memo.lookup("gguf", key)
        if data is memo.MISSING:
            try:
                data = gguf.read_url(url, headers=headers, timeout=sources.REACH_TIMEOUT * 2).to_json()
            except Exception:  # noqa: BLE001 - any failure just means "no header": the plan says so
                continue
            memo.store("gguf", key, data)
        return gguf.GGUFInfo.from_json(data)
    return None


def _stat_key(path: Path) -> tuple:
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ino
