"""Tests for autopipe/runtime/placement.py: schedules, stage placement, plan checks."""

from __future__ import annotations

import dataclasses

import pytest

from autopipe.errors import PlanError, PlanMismatchError
from autopipe.runtime.placement import (
    check_fingerprint,
    check_world_size,
    num_ranks,
    rank_of_stages,
    schedule_kind,
)

from .runtime_cases import Case
from .runtime_plans import hand_plan


@pytest.fixture(scope="module")
def graph():  # type: ignore[no-untyped-def]
    return Case("mlp", 2).build()[1]


@pytest.mark.parametrize(("name", "expected"), [
    ("1f1b", "Schedule1F1B"), ("1F1B", "Schedule1F1B"), ("gpipe", "ScheduleGPipe"),
    ("interleaved_1f1b", "ScheduleInterleaved1F1B"), ("Interleaved1F1B", "ScheduleInterleaved1F1B"),
    ("zb-h1", "ScheduleInterleavedZeroBubble"), ("zbv", "ScheduleZBVZeroBubble"),
])
def test_schedule_names(name: str, expected: str) -> None:
    assert schedule_kind(name).torch_class == expected


def test_unknown_schedule() -> None:
    with pytest.raises(PlanError, match="unknown schedule 'pipedream'") as e:
        schedule_kind("pipedream")
    assert e.value.hint and "1f1b" in e.value.hint


def test_placements(graph) -> None:  # type: ignore[no-untyped-def]
    assert rank_of_stages(hand_plan(graph, 4)) == [0, 1, 2, 3]
    loop = hand_plan(graph, 4, schedule="interleaved-1f1b", ranks=[0, 1, 0, 1])
    assert rank_of_stages(loop) == [0, 1, 0, 1] and num_ranks(loop) == 2
    v = hand_plan(graph, 4, schedule="zbv", ranks=[0, 1, 1, 0])
    assert rank_of_stages(v) == [0, 1, 1, 0]
    # without explicit ranks, the plan's device count gives the ranks
    implicit = hand_plan(graph, 4, schedule="interleaved-1f1b", ranks=[0, 1, 0, 1])
    implicit = dataclasses.replace(implicit, stages=tuple(
        dataclasses.replace(s, rank=None) for s in implicit.stages))
    assert rank_of_stages(implicit) == [0, 1, 0, 1]


def test_placement_that_the_schedule_does_not_run(graph) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PlanError, match=r"places stages on ranks \[0, 1, 1, 0\]"):
        rank_of_stages(hand_plan(graph, 4, schedule="zbv", ranks=[0, 1, 0, 1]))
    with pytest.raises(PlanError, match="same number of stages on every rank"):
        rank_of_stages(hand_plan(graph, 3, schedule="interleaved-1f1b", ranks=[0, 1, 0]))


def test_world_size_must_match(graph) -> None:  # type: ignore[no-untyped-def]
    plan = hand_plan(graph, 2)
    check_world_size(plan, 2)
    with pytest.raises(PlanMismatchError, match="runs on 2 ranks .* world size is 3") as e:
        check_world_size(plan, 3)
    assert e.value.hint and "--nproc-per-node 2" in e.value.hint


def test_fingerprint_must_match(graph) -> None:  # type: ignore[no-untyped-def]
    plan = hand_plan(graph, 2)
    check_fingerprint(plan, graph.fingerprint)
    with pytest.raises(PlanMismatchError, match="another model or micro-batch shape"):
        check_fingerprint(plan, "0" * 64)
