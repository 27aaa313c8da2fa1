"""Tests for the line `autopipe train` ends with: the median step next to the plan's."""

from __future__ import annotations

import dataclasses
import importlib

import pytest
import torch

from autopipe.plan_format import Plan, Predicted
from autopipe.runtime.train import TrainResult
from tests.test_schedule_simulate import hand_plan

train_module = importlib.import_module("autopipe.runtime.train")  # the package exports a function of that name


def _plan(where: str, step_s: float) -> Plan:
    plan = hand_plan()
    return dataclasses.replace(plan, options={"profile_device": where},
                               predicted=Predicted(iteration_s=step_s, bubble_fraction=0.0))


def _result(*step_s: float) -> TrainResult:
    return TrainResult(rank=1, world_size=2, stages=(1,), device="cpu", step_s=list(step_s))


def test_the_median_after_the_first_step_against_the_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(train_module, "allowed_cpus", lambda: {0, 1})
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    line = train_module._against_plan(_plan("cpu", 0.1), _result(9.0, 0.12, 0.11, 0.13),
                                      torch.device("cpu"))
    assert line == "  median step 120.000 ms; the plan predicted 100.000 ms (measured / predicted 1.20)"


def test_a_plan_for_another_device_is_not_compared() -> None:
    line = train_module._against_plan(_plan("estimate:h100", 0.1), _result(9.0, 0.2), torch.device("cpu"))
    assert line.endswith("the plan predicted 100.000 ms for h100, not this cpu") and "/" not in line


def test_ranks_sharing_cores_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """4 ranks on 2 cores ran the README's GPT-2 plan 2.0-2.8x its prediction."""
    monkeypatch.setattr(train_module, "allowed_cpus", lambda: {0, 1})
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    result = dataclasses.replace(_result(9.0, 0.25), world_size=4)
    line = train_module._against_plan(_plan("cpu", 0.1), result, torch.device("cpu"))
    assert "(measured / predicted 2.50); 4 ranks share 2 cores here" in line
