"""What is left of a command's MIP time limit, for the plans it solves one after another
(a degree search's finalists, refine's rounds: [Note: a candidate's time] in
``autopipe.partition.planner``; [Note: time kept for the re-solves])."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from autopipe.plan_format import Plan

REFINE_SHARE = 0.25
"""Of the MIP time, the share a plan or search to be refined leaves to the re-solves after
it ([Note: time kept for the re-solves])."""
ROUNDS_SHARE = 2
"""A round of refine's re-solves at most 1 / this of what is left to its plan: more rounds
may follow."""

_elsewhere = [0.0]
"""Seconds spent in ``not_solving`` so far, in this process."""


@contextlib.contextmanager
def not_solving() -> Iterator[None]:
    """Time that no ``MipTime`` counts: a plan's profile measured while it is planned (a
    search over micro-batch sizes profiles each size it tries)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        _elsewhere[0] += time.perf_counter() - start


@dataclass(slots=True)
class MipTime:
    """``limit`` seconds, spent by ``give``."""

    limit: float
    left: float = field(init=False)
    held: float = field(init=False, default=0.0)
    """Seconds ``give`` keeps back until ``share_among``."""
    parts: int = field(init=False, default=1)
    """Each solve from now on gets 1 / this of what is left, at most (``share_among``)."""

    def __post_init__(self) -> None:
        self.left = self.limit

    def hold(self, share: float = REFINE_SHARE) -> None:
        """Keep ``share`` of the limit from the solves until ``share_among``: for the
        re-solves that refine the plan they make."""
        self.held = share * self.limit

    def share_among(self, parts: int) -> None:
        """From now on each solve gets 1 / ``parts`` of what is left (what was held too):
        ``parts`` solves, or groups of solves, are still to come."""
        self.held = 0.0
        self.parts = max(1, parts)

    def give(self, parts: int, plan: Callable[[float], Plan]) -> Plan:
        """``plan(seconds)`` with 1 / ``parts`` of what is left (less what is held; less
        still where ``share_among`` asked for more parts); what it takes is gone, but for what
        it spends ``not_solving``. The plan records ``limit`` as its time limit (equal inputs,
        equal plans)."""
        start, elsewhere = time.perf_counter(), _elsewhere[0]
        try:
            got = plan(max(0.0, self.left - self.held) / max(parts, self.parts))
        finally:
            spent = time.perf_counter() - start - (_elsewhere[0] - elsewhere)
            self.left = max(0.0, self.left - spent)
        return replace(got, options={**got.options, "time_limit": self.limit})


def share_for_finalists(mip: MipTime | None, finalists: int, done: int, *, again: bool = False) -> None:
    """Before refining the ``done``-th of a search's ``finalists`` (or, ``again``, timing the
    winner again): it gets an equal part of what is left, with the finalists after it and
    the winner's second timing where there are several; each of its rounds at most 1 /
    ``ROUNDS_SHARE`` of that part."""
    if mip is None:
        return
    groups = 1 if again else finalists - done + (finalists > 1)
    mip.share_among(groups * ROUNDS_SHARE)


# [Note: time kept for the re-solves]
#
# A measured plan is refined: its stages re-timed as whole modules and the plan solved
# again on those times (``autopipe.refine``), a search's finalists each so
# (``autopipe.partition.finalists``). Those re-solves share the command's MIP time with
# the solves before them (``time_limit``: all MIP solves together), and until 2026-12-07
# they got what the first plan or search left: ``autopipe plan examples/gpt2.py:build
# --stages 2 --batch-size 8 --schedule auto`` ended "feasible" with a gap of 24–29% (36%
# at ``--time-limit 10``): the re-solves, given no time, kept their warm start and the
# root's bound. Two causes, both measured on a host busy with two other jobs:
#
# * ``give`` counted the seconds a search spent profiling each micro-batch size it tried
#   (its call took 77 s of a 45 s share). That time is now ``not_solving``.
# * Nothing was kept for the re-solves. Now a plan or search that will be refined leaves
#   ``REFINE_SHARE`` of the limit to them (``hold``), and they share it in equal parts
#   (``share_among``): a plan alone, its rounds each at most half of what is left; a
#   search, each finalist (its solve alone where it is not the search's plan, then its
#   rounds) and the winner's second timing an equal part of what is left when it starts
#   (``share_for_finalists``), each of its rounds at most half of that part. A slow MIP
#   (a ZBV finalist's rounds took 8 s each) then cannot take the time of the finalists
#   after it, and a re-solve that ends early (most prove the cuts just timed in under a
#   second) leaves its part to the solves after it.
