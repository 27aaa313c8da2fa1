"""Tests for autopipe/runtime/validate.py: the checks every command that reads a plan makes."""

from __future__ import annotations

import dataclasses
import math

import pytest

import autopipe
from autopipe.errors import PlanError, PlanMismatchError
from autopipe.plan_format import Plan
from autopipe.runtime.validate import validate_plan
from tests.conftest import example_spec

from .runtime_plans import hand_plan


@pytest.fixture(scope="module")
def planned() -> tuple[autopipe.Graph, Plan]:
    spec = example_spec("mlp", layers=3)
    graph = autopipe.trace(spec.model, spec.example_inputs)
    return graph, autopipe.plan(spec.model, spec.example_inputs, num_stages=3, profile="estimate",
                                method="dp")


def _stage(plan: Plan, i: int, **changes: object) -> Plan:
    stages = list(plan.stages)
    stages[i] = dataclasses.replace(stages[i], **changes)  # type: ignore[arg-type]
    return dataclasses.replace(plan, stages=tuple(stages))


def test_planned_and_hand_plans_pass(planned: tuple[autopipe.Graph, Plan]) -> None:
    graph, plan = planned
    assert validate_plan(plan) is None
    split = validate_plan(plan, graph, world_size=3)
    assert split is not None and len(split.stages) == 3
    assert validate_plan(hand_plan(graph, 2), graph) is not None  # no options recorded: still fine


def test_what_the_file_alone_shows(planned: tuple[autopipe.Graph, Plan]) -> None:
    """(A node in two stages is refused when the Plan is made; see test_cli_bad_inputs.py.)"""
    _, plan = planned
    first, second = plan.stages[0], plan.stages[1]
    cases: list[tuple[Plan, str]] = [
        (_stage(plan, 1, nodes=()), "stage 1 has no nodes"),
        (_stage(plan, 1, nodes=second.nodes[1:]), "the stages hold"),
        (_stage(plan, 0, sends=(dataclasses.replace(first.sends[0], to_stage=0),)),
         "stage 0 sends"),
        (_stage(plan, 0, sends=(dataclasses.replace(first.sends[0], tensor=second.nodes[-1]),)),
         "which the later stage 1 makes"),
        (_stage(plan, 0, sends=(dataclasses.replace(first.sends[0], tensor="ghost"),)),
         "'ghost', which no stage makes"),
        (_stage(plan, 0, remade=second.nodes[-1:]), "which stage 1 makes"),
        (_stage(plan, 1, remade=("ghost",)), "'ghost' again, which no stage makes"),
        (_stage(plan, 2, backward_s=math.nan), "backward_s = nan"),
        (dataclasses.replace(plan, schedule="zigzag"), "unknown schedule"),
        (dataclasses.replace(plan, predicted=dataclasses.replace(plan.predicted, peak_memory=(1,))),
         "peak_memory has 1 entries for 3 stages"),
    ]
    for bad, message in cases:
        with pytest.raises(PlanError, match=message):
            validate_plan(bad)


def test_what_only_the_model_shows(planned: tuple[autopipe.Graph, Plan]) -> None:
    graph, plan = planned
    other = example_spec("mlp", layers=4)
    with pytest.raises(PlanMismatchError, match="another model"):
        validate_plan(plan, autopipe.trace(other.model, other.example_inputs))
    with pytest.raises(PlanMismatchError, match="world size is 2"):
        validate_plan(plan, graph, world_size=2)
    # a node moved back a stage: the file cannot tell, the data flow can
    moved = plan.stages[1].nodes[-1]
    back = _stage(_stage(plan, 1, nodes=plan.stages[1].nodes[:-1]), 0,
                  nodes=(*plan.stages[0].nodes, moved))
    validate_plan(dataclasses.replace(back, options={}))
    with pytest.raises(PlanError, match="reads"):
        validate_plan(back, graph)
