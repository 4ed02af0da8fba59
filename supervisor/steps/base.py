"""The step contract: a cheap check(), a preflight() before anything applies, an apply()
that records what it created in the ledger; and the Context steps run in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Union

from ..ledger import Ledger
from ..paths import Paths

if TYPE_CHECKING:  # annotations only: a bundle's reader loads for `apply --bundle` alone
    from ..bundle import Bundle


@dataclass
class Context:
    """What every step is given: paths, the ledger, the reporter, the project, the bundle."""

    paths: Paths
    ledger: Ledger
    report: object
    project_dir: Path
    extra: dict = field(default_factory=dict)
    offline: Bundle | None = None  # the bundle this apply installs from (--bundle): no network, no build


@dataclass
class Status:
    """A step's verdict before it runs: up to date or not, and what it would do."""

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
