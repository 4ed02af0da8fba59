"""A runtime's life as an explicit state machine: every legal transition, named, in one table.

    stopped --start--> starting --probe_ok--> ready
    starting/ready --exited--> backoff --start--> starting         (crash: retry after a delay)
    starting/ready/backoff --give_up--> failed                     (too many failures in the window)
    starting --start_timeout--> backoff                            (never became ready)
    any running state --stop--> stopping --stopped--> stopped
"""

from __future__ import annotations

from enum import Enum


class State(str, Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    FAILED = "failed"


S = State
TRANSITIONS: dict[str, tuple[frozenset[State], State]] = {
    "start": (frozenset({S.STOPPED, S.BACKOFF}), S.STARTING),
    "probe_ok": (frozenset({S.STARTING}), S.READY),
    "exited": (frozenset({S.STARTING, S.READY}), S.BACKOFF),
    "start_timeout": (frozenset({S.STARTING}), S.BACKOFF),
    "give_up": (frozenset({S.STARTING, S.READY, S.BACKOFF}), S.FAILED),
    "stop": (frozenset({S.STARTING, S.READY, S.BACKOFF, S.FAILED, S.STOPPED}), S.STOPPING),
    "stopped": (frozenset({S.STOPPING}), S.STOPPED),
}


class IllegalTransition(RuntimeError):
    pass


def next_state(current: State, event: str) -> State:
    try:
        sources, target = TRANSITIONS[event]
    except KeyError:
        raise IllegalTransition(f"unknown event {event!r}") from None
    if current not in sources:
        raise IllegalTransition(f"{event!r} is not allowed from {current.value}")
    return target
