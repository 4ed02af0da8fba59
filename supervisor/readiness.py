"""Readiness and liveness probes: one HTTP request to a runtime on loopback, and how long to wait
between probes while it starts (soon at first, then a share of the time already waited)."""

from __future__ import annotations

import http.client

FIRST_PROBE_DELAY = 0.002
PROBE_GROWTH = 1.3
PROBE_MAX_DELAY = 0.015  # keeps "ready" within ~15 ms of the first 200 without hammering
# A server that takes long to start (vLLM: minutes) is probed less often the longer it has taken:
# the interval grows to PROBE_ELAPSED_FRACTION of the time waited so far (at most
# PROBE_SLOW_CAP), so the lag stays a small fraction of the start time and a 60 s start costs
# ~150 probes instead of 4,000.
PROBE_ELAPSED_FRACTION = 0.04
PROBE_SLOW_CAP = 2.0


def next_probe_delay(delay: float, elapsed: float) -> float:
    """The wait before the next readiness probe, after `delay`, `elapsed` seconds into the start."""
    return min(max(min(delay * PROBE_GROWTH, PROBE_MAX_DELAY), elapsed * PROBE_ELAPSED_FRACTION), PROBE_SLOW_CAP)


def probe_once(host: str, port: int, path: str, expect: int, timeout: float = 2.0, body: str = "",
               token: str = "") -> bool:
    """GET `path` (POST `body` as JSON when there is one) answers `expect`; `token`, when given, is
    sent as the Bearer key (a server whose every route needs its key)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        if body:
            conn.request("POST", path, body=body.encode(), headers={"Content-Type": "application/json"} | auth)
        else:
            conn.request("GET", path, headers=auth)
        return conn.getresponse().status == expect
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()

