"""The restart policy: when a crashed runtime is started again, and when farmhand gives up.

Exponential backoff with jitter (so runtimes that crash together do not restart in lockstep),
and a give-up rule: `max_failures` failures within `window_s` seconds end in `failed`, with
the last log lines for the user. Pure: the daemon passes the clock in.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class RestartPolicy:
    """When the supervisor restarts a runtime that died, and when it gives up."""

    max_failures: int = 5
    window_s: float = 60.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    jitter: float = 0.2  # +-20%

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict | None) -> RestartPolicy:
        known = {k: v for k, v in (data or {}).items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def after_failure(self, failures: list[float], now: float, rand: float | None = None
                      ) -> tuple[list[float], float | None]:
        """(failures still inside the window, including this one; delay before the next start,
        or None to give up)."""
        recent = [t for t in failures if now - t < self.window_s] + [now]
        if len(recent) >= self.max_failures:
            return recent, None
        delay = min(self.backoff_max_s, self.backoff_initial_s * 2 ** (len(recent) - 1))
        spread = rand if rand is not None else random.uniform(-1.0, 1.0)
        return recent, delay * (1 + self.jitter * spread)
