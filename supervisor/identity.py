"""Who a recorded process is: pid + start time + executable (+ its session and the session's
token), as farmhand's state files keep it. Plain data, no process-table access: process.py
checks an identity against the live system."""

from __future__ import annotations

import os
from typing import NamedTuple

SESSION_ENV = "FARMHAND_SESSION"  # the token every process of a farmhand-started session inherits
CREATE_TIME_SLACK = 0.05  # psutil's create_time is derived from clock ticks: equal within this


class Identity(NamedTuple):
    """Who a recorded process is: a pid alone names whoever holds that number now.
    `exe` and `token` are empty in records written before they existed: such a leader is
    matched on pid + create_time alone, and such a session's members only while it lives.
    (An immutable NamedTuple: every command reads one, and it costs a quarter of a frozen
    dataclass to define; docs/architecture.md.)"""

    pid: int
    create_time: float
    sid: int
    exe: str = ""
    token: str = ""

    def to_json(self) -> dict:
        return self._asdict()

    @classmethod
    def from_json(cls, data: dict) -> Identity:
        """From a record on disk; ValueError (or TypeError, KeyError) when it has not that shape."""
        return cls(int(data["pid"]), float(data["create_time"]), int(data.get("sid", data["pid"])),
                   str(data.get("exe") or ""), str(data.get("token") or ""))


def new_session_token() -> str:
    return os.urandom(16).hex()  # secrets' own source, without its import cost on every command
