"""A runtime's life as an explicit state machine: every legal transition, named, in one table.

    stopped --start--> starting --probe_ok--> ready
    ready --probe_miss--> unhealthy --probe_ok--> ready           (a liveness probe went unanswered)
    unhealthy --hung--> backoff                                    (N misses in a row: killed, restarted)
    starting/ready/unhealthy --exited--> backoff --start--> starting   (crash: retry after a delay)
    starting/ready/unhealthy/backoff --give_up--> failed          (too many failures in the window)
    starting --start_timeout--> backoff                            (never became ready)
    failed --reset--> stopped                                      (`farmhand up`: a fresh failure budget)
    any state --stop--> stopping --stopped--> stopped
"""

from __future__ import annotations

from enum import Enum


class State(str, Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    UNHEALTHY = "unhealthy"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    FAILED = "failed"


S = State
TRANSITIONS: dict[str, tuple[frozenset[State], State]] = {
    "start": (frozenset({S.STOPPED, S.BACKOFF}), S.STARTING),
    "probe_ok": (frozenset({S.STARTING, S.UNHEALTHY}), S.READY),
    "probe_miss": (frozenset({S.READY}), S.UNHEALTHY),
    "hung": (frozenset({S.UNHEALTHY}), S.BACKOFF),
    "exited": (frozenset({S.STARTING, S.READY, S.UNHEALTHY}), S.BACKOFF),
    "start_timeout": (frozenset({S.STARTING}), S.BACKOFF),
    "give_up": (frozenset({S.STARTING, S.READY, S.UNHEALTHY, S.BACKOFF}), S.FAILED),
    "reset": (frozenset({S.FAILED}), S.STOPPED),
    "stop": (frozenset({S.STARTING, S.READY, S.UNHEALTHY, S.BACKOFF, S.FAILED, S.STOPPED}), S.STOPPING),
    "stopped": (frozenset({S.STOPPING}), S.STOPPED),
}
RUNNING = frozenset({S.STARTING, S.READY, S.UNHEALTHY})


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
