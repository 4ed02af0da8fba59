"""The supervisor's runtimes.json for a selection: one LaunchRequest per runtime farmhand runs,
turned by its backend into argv, env and a probe, then into a RuntimeSpec.

A runtime's launch depends on what earlier steps of the same apply put on disk: the GGUF
header of a model just fetched decides llama-server's chat template, and the installed binary
and model files decide the spec's identity (a restart is due when one changes). So the spec is
rendered when asked, and rendered again only when one of those inputs changed; the selection
it comes from is never modified.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from . import installers, memo, sources, store
from .backends.base import LaunchModel, LaunchRequest
from .deployment import ModelSpec
from .fsio import FINGERPRINT, file_fingerprint
from .gguf import GGUFInfo
from .paths import Paths
from .policy import RestartPolicy
from .ports import LOOPBACK
from .selection import RuntimePlan, Selection, ServedModel
from .specs import RuntimeSpec, SupervisorSpec

Header = Callable[[ModelSpec], "GGUFInfo | None"]


def launch_model(served: ServedModel, info: GGUFInfo | None) -> LaunchModel:
    return LaunchModel(served.model, tuple(served.roles), served.ctx_size, info, served.embeddings,
                       served.effective_source, served.via_store, served.estimate.kv, served.longest_reply)


def gpu_share(rt: RuntimePlan) -> float | None:
    """The least share of its GPUs this runtime may claim (what vLLM is told to use)."""
    gpus = [d for d in rt.devices if d.kind == "gpu" and d.total_bytes]
    return min(rt.grantable_fraction(d) for d in gpus) if gpus else None


class SpecRenderer:
    def __init__(self, selection: Selection, paths: Paths, settings: dict, header: Header):
        self.selection, self.paths, self.supervisor_port = selection, paths, selection.supervisor_port
        self.settings, self.header = settings, header
        self.notes: dict[str, list[str]] = {}
        self._key: str | None = None
        self._spec: SupervisorSpec | None = None
        self.renders = 0  # how many times a spec was built (once per change of its inputs)

    def info(self, served: ServedModel) -> GGUFInfo | None:
        """A model's header as it is now: what selection saw, else what the file on disk says."""
        return served.info if served.info is not None else self.header(served.model)

    def launch_model(self, served: ServedModel) -> LaunchModel:
        return launch_model(served, self.info(served))

    def _binary(self, rt: RuntimePlan) -> Path:
        return installers.get(rt.install.method).binary(rt.install, self.paths)

    def _files(self, rt: RuntimePlan) -> list[Path]:
        """Files the process reads at start. A backend with its own store reads its models from
        there, through its API."""
        return [self._binary(rt)] + [store.store_path(self.paths.models, m.model) for m in rt.models
                                     if m.via_store and not rt.backend.own_store]

    def request(self, rt: RuntimePlan) -> LaunchRequest:
        """What `rt`'s backend is told, from the selection and what is on disk now."""
        routes = self.selection.routes if rt.backend.gateway else ()
        return LaunchRequest(rt.name, rt.decl, str(self._binary(rt)), rt.port,
                             tuple(self.launch_model(m) for m in rt.models), tuple(rt.devices), rt.placement,
                             gpu_share(rt), self.paths, sources.mirrors(), routes)

    def files(self, rt: RuntimePlan) -> dict[Path, str]:
        """The files `rt` reads that the plan writes (path -> text)."""
        return rt.backend.files(self.request(rt))

    def render(self) -> SupervisorSpec:
        managed = [rt for rt in self.selection.runtimes.values() if rt.managed]
        requests = {rt.name: self.request(rt) for rt in managed}
        # What the process reads at start: a change of any of it is a restart.
        identities = {rt.name: _identity(self._files(rt), rt.backend.files(requests[rt.name])) for rt in managed}
        key = memo.digest(repr(sources.mirrors()), [[rt.name, identities[rt.name],
                                                     [repr(m.info) for m in requests[rt.name].models]]
                                                    for rt in managed])
        if key == self._key and self._spec is not None:
            return self._spec
        out = []
        restart = RestartPolicy.from_json({
            k: v for k, v in (("max_failures", self.settings.get("max_failures")),
                              ("window_s", self.settings.get("failure_window_s"))) if v})
        notes: dict[str, list[str]] = {}
        for rt in managed:
            request = requests[rt.name]
            launch = rt.backend.launch(request)
            notes[rt.name] = list(launch.notes)
            probe = rt.backend.readiness(request)
            out.append(RuntimeSpec(
                name=rt.name, backend=rt.backend.name, argv=tuple(launch.argv), env=tuple(sorted(launch.env.items())),
                port=rt.port, base_url=rt.url, readiness_url=probe.url,
                readiness_expect=probe.expect, readiness_body=probe.body, readiness_timeout_s=probe.timeout_s,
                readiness_key_env=probe.key_env,
                liveness_url=probe.liveness_url, models_url=rt.backend.models_url(request),
                metrics_url=rt.backend.metrics_url(request), metrics_key_env=rt.backend.metrics_key_env(request),
                variant=rt.decl.variant, roles=tuple(dict.fromkeys(r for m in rt.models for r in m.roles)),
                stop_signal=rt.backend.stop_signal,
                grace_s=float(self.settings.get("grace_s", rt.backend.grace_s)),
                start_timeout_s=float(self.settings.get("start_timeout_s", rt.backend.start_timeout_s)),
                restart=restart,
                liveness_interval_s=float(self.settings.get("liveness_interval_s", RuntimeSpec.liveness_interval_s)),
                liveness_timeout_s=float(self.settings.get("liveness_timeout_s", RuntimeSpec.liveness_timeout_s)),
                liveness_misses=int(self.settings.get("liveness_misses", RuntimeSpec.liveness_misses)),
                models=tuple(rt.model_id(m) for m in rt.models),
                devices=tuple(d.id for d in rt.devices), identity=identities[rt.name]))
        self.notes = notes
        self._key, self._spec = key, SupervisorSpec(tuple(out), LOOPBACK, self.supervisor_port)
        self.renders += 1
        return self._spec

    def text(self) -> str:
        return self.render().text()


def _identity(files: list[Path], written: dict[Path, str] | None = None) -> str:
    """A digest of the files' fingerprints (a missing file counts as missing) and of the text of
    the files the plan writes for the runtime."""

    prints: list = [[str(path), memo.digest(text)] for path, text in sorted((written or {}).items())]
    for path in files:
        try:
            fp = file_fingerprint(path)
            prints.append([str(path)] + [fp[k] for k in FINGERPRINT])
        except OSError:
            prints.append([str(path), None])
    return memo.digest(prints)[:16]
