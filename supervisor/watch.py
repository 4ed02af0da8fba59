"""`farmhand status --watch`: a live table of the runtimes, redrawn from the supervisor's GET
/metrics every interval (rich's Live): state, restarts, decode tokens/s (the change of the
backend's generated-token counter since the last scrape), resident memory, uptime. Ctrl-C ends it
cleanly. Parsing is pure (rows_from_metrics), so the table is tested without a terminal too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from . import statefiles
from .metrics import scrape
from .paths import Paths
from .ports import client_host

# Generated-token counters of the backends that report them, as their /metrics name them.
TOKEN_COUNTERS = ("llamacpp:tokens_predicted", "vllm:generation_tokens")
HEADERS = ("RUNTIME", "STATE", "RESTARTS", "TOK/S", "RSS", "UPTIME")


@dataclass(frozen=True)
class WatchRow:
    """One runtime's line in `status --watch`."""

    runtime: str
    state: str
    restarts: int
    tokens_per_s: float | None  # None: the backend reports no token counter (or no scrape yet)
    rss_bytes: float | None
    uptime_s: float


def rows_from_metrics(text: str, previous: dict[str, float], seconds: float) -> tuple[list[WatchRow], dict[str, float]]:
    """The table's rows from one /metrics text, and each runtime's token count (the next call's
    `previous`, `seconds` before it)."""
    state: dict[str, str] = {}
    restarts: dict[str, float] = {}
    rss: dict[str, float] = {}
    uptime: dict[str, float] = {}
    tokens: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            runtime = s.labels.get("runtime")
            if runtime is None:
                continue
            if s.name == "farmhand_runtime_state" and s.value == 1:
                state[runtime] = s.labels.get("state", "?")
            elif s.name == "farmhand_runtime_restarts_total":
                restarts[runtime] = s.value
            elif s.name == "farmhand_runtime_resident_memory_bytes":
                rss[runtime] = s.value
            elif s.name == "farmhand_runtime_uptime_seconds":
                uptime[runtime] = s.value
            elif s.name.removesuffix("_total") in TOKEN_COUNTERS:
                tokens[runtime] = tokens.get(runtime, 0.0) + s.value
    rows = []
    for runtime in sorted(state):
        rate = None
        if runtime in tokens and runtime in previous and seconds > 0:
            rate = max(0.0, tokens[runtime] - previous[runtime]) / seconds
        rows.append(WatchRow(runtime, state[runtime], int(restarts.get(runtime, 0)), rate, rss.get(runtime),
                             uptime.get(runtime, 0.0)))
    return rows, tokens


def fetch_metrics(paths: Paths, timeout: float = 5.0) -> str | None:
    record, _ = statefiles.read_supervisor(paths)
    if record is None or not record.port:
        return None
    return scrape(f"http://{client_host(record.host)}:{record.port}/metrics", timeout=timeout)


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value / (1 << 20):.0f} MiB"


def table(rows: list[WatchRow], note: str):
    from rich.table import Table

    out = Table(title=f"farmhand status --watch  ({note})", title_justify="left")
    for header in HEADERS:
        out.add_column(header, justify="right" if header in ("RESTARTS", "TOK/S", "RSS", "UPTIME") else "left")
    for r in rows:
        style = {"ready": "green", "failed": "red", "backoff": "yellow", "unhealthy": "yellow"}.get(r.state, "")
        out.add_row(r.runtime, f"[{style}]{r.state}[/]" if style else r.state, str(r.restarts),
                    "-" if r.tokens_per_s is None else f"{r.tokens_per_s:.1f}", _mib(r.rss_bytes), f"{r.uptime_s:.0f}s")
    return out


def watch(paths: Paths, interval: float) -> None:
    """Redraw until Ctrl-C."""
    from rich.console import Console
    from rich.live import Live

    previous: dict[str, float] = {}
    last = time.monotonic()
    console = Console()
    try:
        with Live(table([], "connecting"), console=console, auto_refresh=False, transient=False) as live:
            while True:
                text = fetch_metrics(paths)
                now = time.monotonic()
                if text is None:
                    live.update(table([], "the supervisor is not running: farmhand up"), refresh=True)
                else:
                    rows, previous = rows_from_metrics(text, previous, now - last)
                    live.update(table(rows, f"every {interval:g}s, Ctrl-C to stop"), refresh=True)
                last = now
                time.sleep(interval)
    except KeyboardInterrupt:
        console.print("stopped watching")
