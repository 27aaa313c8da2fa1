"""A clock moved on by hand, for the tests of how a command's MIPs share its time limit
([Note: a candidate's time] in autopipe/partition/planner.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Clock:
    """Stands in for the ``time`` module of the planner, the search or the degree search:
    ``perf_counter`` reads ``now``, which only ``to_the_limit``'s solves move on."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def to_the_limit(clock: Clock, limits: list[float], solve: Callable[..., Any],
                 when: Callable[[dict[str, Any]], bool] = lambda kwargs: True,
                 most: float = float("inf")) -> Callable[..., Any]:
    """``solve`` as a MIP that runs to its ``time_limit``, or to ``most`` seconds (where
    ``when`` its keywords): each call records its limit in ``limits`` and moves ``clock``
    on by what it ran."""
    def run(*args: Any, **kwargs: Any) -> Any:
        got = solve(*args, **kwargs)
        if when(kwargs):
            limits.append(kwargs["time_limit"])
            clock.now += min(most, kwargs["time_limit"])
        return got
    return run
