"""Tests for autopipe/partition/mip_time.py: the solves of one command share its MIP time,
and a plan or search to be refined keeps a share for the re-solves ([Note: time kept for
the re-solves])."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from autopipe.partition.finalists import finalists
from autopipe.partition.mip_time import REFINE_SHARE, ROUNDS_SHARE, MipTime
from autopipe.partition.planner import plan_profile
from autopipe.partition.synthetic import synthetic_profile
from autopipe.plan_format import Plan
from autopipe.profile.profile import Profile
from autopipe.refine import refine_search
from tests.mip_clock import Clock
from tests.test_partition_search import at_size

PLAN = plan_profile(synthetic_profile(6, seed=1), num_stages=2, method="dp")


def _spend(clock: Clock, given: list[float], used: float | None = None) -> Callable[[float], Plan]:
    """A solve that records the seconds given and runs them all (or ``used``)."""
    def solve(seconds: float) -> Plan:
        given.append(seconds)
        clock.now += seconds if used is None else min(used, seconds)
        return PLAN
    return solve


def test_held_seconds_wait_for_the_re_solves(monkeypatch: pytest.MonkeyPatch) -> None:
    import autopipe.partition.mip_time as mip_time

    clock, given = Clock(), []
    monkeypatch.setattr(mip_time, "time", clock)
    mip = MipTime(40.0)
    mip.hold()
    mip.give(2, _spend(clock, given))  # a search's candidates share what is not held
    mip.give(1, _spend(clock, given))
    assert given == [(1 - REFINE_SHARE) * 40 / 2] * 2 and mip.left == pytest.approx(10.0)
    mip.share_among(4)  # each solve at most a quarter of what is left, what was held too
    for used in (1.0, None, None):
        mip.give(1, _spend(clock, given, used))
    assert given[2:] == [2.5, 2.25, 1.6875]
    assert mip.give(1, lambda s: PLAN).options["time_limit"] == 40.0


def test_nothing_held_the_first_solve_may_take_all() -> None:
    given: list[float] = []
    MipTime(30.0).give(1, _spend(Clock(), given))
    assert given == [30.0]


def test_a_batch_size_search_shares_the_time_kept_among_its_finalists() -> None:
    """``refine_search`` solves each finalist but the search's own alone, then refines each
    and times the winner again: each finalist's rounds and the second timing get an equal
    part of what is left when they start ([Note: time kept for the re-solves])."""
    found = plan_profile(at_size, num_stages=2, batch_size=8, schedule="1f1b", method="dp")
    steps = sorted(r["iteration_s"] for r in found.options["search"] if isinstance(r.get("iteration_s"), float))
    k = len(finalists(steps, 3))
    assert k >= 2
    mip = MipTime(60.0)
    mip.hold()
    seen: list[int] = []

    def solve(profile: Profile, **choice: object) -> Plan:
        seen.append(mip.parts)
        return mip.give(1, lambda s: plan_profile(profile, **choice, method="dp"))  # type: ignore[arg-type]

    def refine_one(plan: Plan, size: int, replan: Callable[[Profile], Plan]) -> Plan:
        replan(at_size(size))
        return _faster(plan) if plan.microbatches == found.microbatches else plan

    refine_search(found, {b: at_size(b) for b in (1, 2, 4, 8)}, solve, refine_one, mip=mip)
    groups = k + 1  # the finalists and the winner's second timing
    starts = [ROUNDS_SHARE * groups] * (k - 1)
    rounds = [ROUNDS_SHARE * (groups - j) for j in range(k)] + [ROUNDS_SHARE]
    assert mip.held == 0.0 and seen == starts + rounds


def _faster(plan: Plan) -> Plan:
    import dataclasses

    return dataclasses.replace(plan, predicted=dataclasses.replace(plan.predicted, iteration_s=0.0))


def test_profiling_while_planning_is_not_mip_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A search over micro-batch sizes profiles each size as it plans it: that time is not
    the MIPs' (until 2026-12-07 it was counted, and a GPT-2 search that spent 77 s, most of
    it profiling, left refine's re-solves nothing of its 60 s)."""
    import autopipe.partition.mip_time as mip_time
    import autopipe.partition.planner as planner

    clock = Clock()
    monkeypatch.setattr(mip_time, "time", clock)

    def slow_to_profile(size: int) -> Profile:
        clock.now += 20.0  # profiling one size
        return at_size(size)

    mip = MipTime(30.0)
    plan = mip.give(1, lambda s: planner.plan_profile(slow_to_profile, num_stages=2, batch_size=8,
                                                      schedule="1f1b", method="dp", time_limit=s))
    assert len(plan.options["search"]) == 4 and clock.now == 60.0  # sizes 4, 2 and 1 (8 cannot run)
    assert mip.left == 30.0
