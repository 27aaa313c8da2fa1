"""What is left of a command's MIP time limit, for the plans it solves one after another
(a degree search's finalists, refine's rounds: [Note: a candidate's time] in
``autopipe.partition.planner``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from autopipe.plan_format import Plan


@dataclass(slots=True)
class MipTime:
    """``limit`` seconds, spent by ``give``."""

    limit: float
    left: float = field(init=False)

    def __post_init__(self) -> None:
        self.left = self.limit

    def give(self, parts: int, plan: Callable[[float], Plan]) -> Plan:
        """``plan(seconds)`` with 1 / ``parts`` of what is left; what it takes is gone. The
        plan records ``limit`` as its time limit (equal inputs, equal plans)."""
        start = time.perf_counter()
        try:
            got = plan(self.left / parts)
        finally:
            self.left = max(0.0, self.left - (time.perf_counter() - start))
        return replace(got, options={**got.options, "time_limit": self.limit})
