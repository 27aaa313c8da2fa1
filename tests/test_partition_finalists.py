"""Tests for autopipe/partition/finalists.py: a measured search re-times its finalists as
whole stages and keeps the fastest ([Note: finalists re-timed]), over degrees and over
micro-batch sizes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from autopipe.partition.degrees import plan_degrees
from autopipe.partition.finalists import REFINE_WITHIN, finalists, refined_best
from autopipe.partition.planner import plan_profile
from autopipe.plan_format import Plan
from autopipe.profile.profile import Profile
from autopipe.refine import refine_search
from tests.test_partition_degrees import sized
from tests.test_partition_search import at_size


def _at(plan: Plan, step: float, tag: str) -> Plan:
    """``plan`` predicting ``step``, tagged as a refine would (``options["refine"]``)."""
    return dataclasses.replace(plan, predicted=dataclasses.replace(plan.predicted, iteration_s=step),
                               options={**plan.options, "refine": {"rounds": [tag]}})


def test_finalists_are_the_fastest_within_the_factor() -> None:
    assert finalists([1.0, 1.2, REFINE_WITHIN, REFINE_WITHIN + 0.01], 9) == [0, 1, 2]
    assert finalists([1.0, 1.2, 1.3], 2) == [0, 1]
    assert finalists([1.0, 5.0], 0) == [0]


def test_the_fastest_refined_wins_and_is_timed_again() -> None:
    calls: list[tuple[int, float]] = []

    class P:  # the least a plan needs here: a predicted step
        def __init__(self, step: float) -> None:
            self.predicted = type("Predicted", (), {"iteration_s": step})()

    given = [P(1.0), P(1.1), P(1.2)]
    after = {0: 2.0, 1: 1.5, 2: 1.5}  # the second and third tie once re-timed: the earlier wins

    def refine(k: int, plan: P) -> P:  # type: ignore[override]
        calls.append((k, plan.predicted.iteration_s))
        return P(after[k] + (0.1 if plan not in given else 0.0))

    best, done, again = refined_best(given, refine)  # type: ignore[arg-type]
    assert best == 1 and [p.predicted.iteration_s for p in done] == [2.0, 1.5, 1.5]
    assert again is not None and again.predicted.iteration_s == pytest.approx(1.6)
    assert calls == [(0, 1.0), (1, 1.1), (2, 1.2), (1, 1.5)]
    # one finalist, or nothing refined: no second timing
    assert refined_best(given[:1], refine)[2] is None  # type: ignore[arg-type]
    assert refined_best(given, lambda k, p: p)[2] is None  # type: ignore[arg-type]


def _refine_by_stages(factor: dict[int, float], seen: list[int]) -> Callable[..., Plan]:
    """A refine hook that multiplies a candidate's step by ``factor[its stage count]``, as
    whole stages would read; ``seen`` collects the stage counts it was asked for."""
    def refine(plan: Plan, size: int, replan: Callable[[Profile], Plan]) -> Plan:
        seen.append(plan.num_stages)
        return _at(plan, plan.predicted.iteration_s * factor[plan.num_stages], f"{plan.num_stages}")
    return refine


def test_a_degree_search_keeps_the_fastest_refined_finalist() -> None:
    """Re-timed, the node sums' winner runs 3x its sums and the other degree its sums: the
    search keeps the other (until 2026-12-07 only the node sums' winner was re-timed, and
    kept at 3x its step)."""
    kw = dict(gpus=2, batch_size=8, microbatch_sizes=[4], schedule="1f1b", screen=None, method="dp")
    plain = plan_degrees(sized, **kw)  # type: ignore[arg-type]
    steps = {r["stages"]: r["iteration_s"] for r in plain.options["degrees"] if "iteration_s" in r}
    won, other = plain.num_stages, 3 - plain.num_stages
    assert steps[other] <= REFINE_WITHIN * steps[won]  # both are finalists
    seen: list[int] = []
    slow = {won: 3.0, other: 1.0}
    plan = plan_degrees(sized, refine=_refine_by_stages(slow, seen), **kw)  # type: ignore[arg-type]
    assert plan.num_stages == other and plan.data_parallel is not None
    assert plan.data_parallel.degree == 2 // other
    assert seen == [won, other, other]  # both finalists in node-sum order, then the winner again
    rows = {r["stages"]: r for r in plan.options["degrees"] if "iteration_s" in r}
    assert rows[won]["refined_s"] == pytest.approx(3 * steps[won]) and "retimed_s" not in rows[won]
    assert rows[other]["refined_s"] == pytest.approx(steps[other])
    assert rows[other]["retimed_s"] == plan.predicted.iteration_s == pytest.approx(steps[other])
    # with one finalist only the node sums' winner is re-timed, as before
    seen.clear()
    one = plan_degrees(sized, refine=_refine_by_stages(slow, seen), finalists=1, **kw)  # type: ignore[arg-type]
    assert one.num_stages == won and seen == [won]


def test_a_batch_size_search_keeps_the_fastest_refined_finalist() -> None:
    """``refine_search``: the finalists of a search over micro-batch sizes are each solved
    alone on their size's profile and refined; a finalist other than the search's choice
    wins when its re-timed step is the least, with the search's rows and its own size."""
    found = plan_profile(at_size, num_stages=2, batch_size=8, schedule="1f1b", method="dp")
    rows = sorted((r for r in found.options["search"] if isinstance(r.get("iteration_s"), float)),
                  key=lambda r: r["iteration_s"])
    assert len(finalists([r["iteration_s"] for r in rows], 3)) >= 2
    runner_up = rows[1]
    profiles = {r["microbatch_size"]: at_size(r["microbatch_size"]) for r in rows}
    asked: list[tuple[int, int]] = []

    def solve(profile: Profile, **choice: object) -> Plan:
        return plan_profile(profile, **choice, method="dp")  # type: ignore[arg-type]

    def refine_one(plan: Plan, size: int, replan: Callable[[Profile], Plan]) -> Plan:
        asked.append((plan.microbatches, size))
        assert replan(profiles[size]).microbatches == plan.microbatches
        slow = 1.0 if plan.microbatches == runner_up["microbatches"] else 10.0
        return _at(plan, plan.predicted.iteration_s * slow, str(size))

    plan = refine_search(found, profiles, solve, refine_one)
    assert plan.microbatches == runner_up["microbatches"]
    assert plan.options["microbatch_size"] == runner_up["microbatch_size"]
    assert plan.options["batch_size"] == 8 and "search_lower_bound_s" not in plan.options
    assert plan.graph_fingerprint == f"synthetic-size-{runner_up['microbatch_size']}"
    assert asked[:2] == [(r["microbatches"], r["microbatch_size"]) for r in rows[:2]]
    assert asked[-1] == (runner_up["microbatches"], runner_up["microbatch_size"])  # timed again
    kept = {r["microbatches"]: r for r in plan.options["search"]}
    assert kept[runner_up["microbatches"]]["retimed_s"] == plan.predicted.iteration_s
    assert kept[found.microbatches]["refined_s"] == pytest.approx(10 * found.predicted.iteration_s)
