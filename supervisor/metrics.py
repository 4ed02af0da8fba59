"""The supervisor's GET /metrics: Prometheus's text format, written by prometheus-client.

What the supervisor knows, per runtime: its state (one gauge per state, 1 for the current one),
restarts, how long its last start took to be ready, the latency of its liveness probes (a
histogram), uptime, its processes' resident memory and CPU seconds (psutil: the leader and its
children), the devices it holds; per role: which runtime and model serve it, and whether it is
remote; per model in the store: its bytes and whether the file still matches what was verified.

Each runtime's own metrics (llama-server's `--metrics`, vLLM's /metrics) are passed through with
`runtime`, `role` and `model` labels added, scraped concurrently with a short timeout: a backend
that is slow or down shows as `farmhand_backend_scrape_up 0` and never fails the scrape.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor, TimeoutError
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import psutil
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from . import statefiles
from .fsio import fingerprint_matches
from .observed import ProbeLatency, RuntimeView
from .paths import Paths
from .states import State
from .stepids import model_name

BACKEND_TIMEOUT_S = 1.0  # one slow backend must not stall a scrape


class SupervisorMetrics(Collector):
    """The registry behind /metrics: `views()` gives the runtimes now, `probes` the latencies the
    supervisor's watchers observed."""

    def __init__(self, paths: Paths, views: Callable[[], list[RuntimeView]], probes: ProbeLatency):
        self.paths, self.views, self.probes = paths, views, probes
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="metrics")

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- the collector --------------------------------------------------------------------------
    def collect(self) -> Iterable[Metric]:
        views = self.views()
        scrapes = {v.name: self._pool.submit(scrape, v.metrics_url, v.metrics_token)
                   for v in views if v.metrics_url and v.state in (State.READY.value, State.UNHEALTHY.value)}
        # The socket timeout bounds each read, not a backend that drips bytes: one deadline for all.
        deadline = time.monotonic() + BACKEND_TIMEOUT_S + 0.5
        yield from runtime_families(views)
        yield probe_family(self.probes)
        yield from process_families(views)
        yield from role_families(statefiles.read_deployment(self.paths))
        yield from store_families(self.paths)
        up = GaugeMetricFamily("farmhand_backend_scrape_up", "1 when the runtime's own /metrics answered this scrape.",
                               labels=["runtime"])
        passed: dict[str, Metric] = {}
        for view in views:
            if not view.metrics_url:
                continue
            text = _result(scrapes.get(view.name), deadline)
            up.add_metric([view.name], 1 if text is not None else 0)
            if text is not None:
                relabel(text, view, passed)
        yield up
        yield from passed.values()


def _result(future: Future | None, deadline: float) -> str | None:
    if future is None:
        return None
    try:
        return future.result(timeout=max(0.0, deadline - time.monotonic()))
    except TimeoutError:
        return None


def runtime_families(views: list[RuntimeView]) -> Iterable[Metric]:
    state = GaugeMetricFamily("farmhand_runtime_state", "1 for the state the runtime is in, 0 for the others.",
                              labels=["runtime", "backend", "variant", "state"])
    restarts = CounterMetricFamily("farmhand_runtime_restarts", "Restarts since the supervisor started.",
                                   labels=["runtime"])
    ready = GaugeMetricFamily("farmhand_runtime_ready_seconds", "How long its last start took to be ready.",
                              labels=["runtime"])
    uptime = GaugeMetricFamily("farmhand_runtime_uptime_seconds", "Seconds since it became ready (0 when not ready).",
                               labels=["runtime"])
    devices = GaugeMetricFamily("farmhand_runtime_device_info", "The devices the runtime holds.",
                                labels=["runtime", "device"])
    for v in views:
        for s in State:
            state.add_metric([v.name, v.backend, v.variant, s.value], 1 if v.state == s.value else 0)
        restarts.add_metric([v.name], v.restarts)
        if v.ready_after_s is not None:
            ready.add_metric([v.name], v.ready_after_s)
        uptime.add_metric([v.name], v.uptime_s)
        for device in v.devices:
            devices.add_metric([v.name, device], 1)
    return state, restarts, ready, uptime, devices


def probe_family(probes: ProbeLatency) -> Metric:
    family = HistogramMetricFamily("farmhand_runtime_probe_seconds", "Liveness probe latency.", labels=["runtime"])
    for runtime, (buckets, total) in sorted(probes.snapshot().items()):
        family.add_metric([runtime], buckets, total)
    return family


def process_families(views: list[RuntimeView]) -> Iterable[Metric]:
    """Resident memory and CPU seconds of each running runtime: its leader and every descendant
    (llama-server's router and vLLM start children)."""
    rss = GaugeMetricFamily("farmhand_runtime_resident_memory_bytes", "Resident memory of its processes.",
                            labels=["runtime"])
    cpu = CounterMetricFamily("farmhand_runtime_cpu_seconds", "CPU seconds (user + system) of its processes.",
                              labels=["runtime"])
    for v in views:
        if v.pid is None:
            continue
        try:
            leader = psutil.Process(v.pid)
            procs = [leader, *leader.children(recursive=True)]
        except psutil.Error:
            continue
        memory = seconds = 0.0
        for proc in procs:
            try:
                with proc.oneshot():
                    memory += proc.memory_info().rss
                    times = proc.cpu_times()
                    seconds += times.user + times.system
            except psutil.Error:
                continue  # exited meanwhile
        rss.add_metric([v.name], memory)
        cpu.add_metric([v.name], seconds)
    return rss, cpu


def role_families(record: dict) -> Iterable[Metric]:
    roles = GaugeMetricFamily("farmhand_role_info", "Which runtime and model serve each role (runtime empty: remote).",
                              labels=["role", "runtime", "model", "remote", "default"])
    for role in record.get("roles", []):
        roles.add_metric([role["role"], role.get("runtime") or "", role.get("model_id") or role.get("model") or "",
                          "false" if role.get("runtime") else "true",
                          "true" if role["role"] == record.get("default_role") else "false"], 1)
    return (roles,)


def store_families(paths: Paths) -> Iterable[Metric]:
    size = GaugeMetricFamily("farmhand_model_bytes", "Bytes of each model in farmhand's store.", labels=["model"])
    verified = GaugeMetricFamily("farmhand_model_verified", "1 while the file still matches what its last "
                                 "verification (sha256) recorded.", labels=["model"])
    try:  # read as it is: the supervisor never loads the planner's Ledger
        artifacts = json.loads(paths.ledger.read_text()).get("artifacts") or {}
    except (OSError, ValueError, AttributeError):  # none yet, or damaged: apply's to report
        artifacts = {}
    for key, record in sorted(artifacts.items()):
        name = model_name(key)
        if name is None:
            continue
        path = Path(record.get("path", ""))
        size.add_metric([name], record.get("size") or 0)
        verified.add_metric([name], 1 if path.is_file() and fingerprint_matches(record, path) else 0)
    return size, verified


def scrape(url: str, token: str = "", timeout: float = BACKEND_TIMEOUT_S) -> str | None:
    """The text at a /metrics URL (a runtime's, or the supervisor's for `status --watch`), or None
    when it does not answer 200 in time."""
    where = urlparse(url)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=timeout)
    try:
        conn.request("GET", where.path or "/metrics", headers={"Authorization": f"Bearer {token}"} if token else {})
        resp = conn.getresponse()
        return resp.read(8 << 20).decode("utf-8", "replace") if resp.status == 200 else None
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def relabel(text: str, view: RuntimeView, families: dict[str, Metric]) -> None:
    """Add the runtime's families to `families` (merged by name across runtimes: one HELP and
    TYPE per name), each sample labelled with the runtime, its roles and its model."""
    added = {"runtime": view.name, "role": ",".join(view.roles), "model": ",".join(view.models)}
    try:
        parsed = list(text_string_to_metric_families(text))
    except ValueError:
        return  # not Prometheus text: nothing passed through, and the scrape still succeeds
    for family in parsed:
        if family.name.startswith("farmhand_"):
            continue  # farmhand's own names are farmhand's: a backend's would make the scrape invalid
        merged = families.get(family.name)
        if merged is None:
            merged = families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
        elif merged.type != family.type:
            continue  # two runtimes disagree on a type: the first one's stands
        for sample in family.samples:
            merged.add_sample(sample.name, {**sample.labels, **added}, sample.value, sample.timestamp)
