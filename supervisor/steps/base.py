"""The step contract: a cheap check(), a preflight() before anything applies, an apply()
that records what it created in the ledger; and the Context steps run in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Union

from ..bundle import Bundle
from ..ledger import Ledger
from ..paths import Paths


@dataclass
class Context:
    paths: Paths
    ledger: Ledger
    report: object
    project_dir: Path
    extra: dict = field(default_factory=dict)
    offline: Bundle | None = None  # the bundle this apply installs from (--bundle): no network, no build


@dataclass
class Status:
    up_to_date: bool
    detail: str


class Step:
    id: str = ""
    after: tuple[str, ...] = ()

    def preflight(self, ctx: Context) -> None:
        """Raise a FarmhandError when this step could not be applied here."""

    def check(self, ctx: Context) -> Status:
        raise NotImplementedError

    def apply(self, ctx: Context) -> str:
        raise NotImplementedError


Content = Union[str, Callable[[], str]]
