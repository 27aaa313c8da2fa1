"""Tests for autopipe/profile/optimizer.py and the optimizer step in the plan's prediction."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import autopipe
from autopipe._optimizers import OPTIMIZERS
from autopipe.partition.planner import plan_profile
from autopipe.profile import estimate, load_device_spec
from autopipe.profile.optimizer import estimate_rates, measure_rates
from autopipe.schedule import simulate
from autopipe.schedule.plan_costs import plan_costs

from .conftest import example_spec


def test_measured_rates_are_positive_for_every_optimizer() -> None:
    rates = measure_rates(torch.device("cpu"), torch.float32, repeats=2)
    assert set(rates) == set(OPTIMIZERS)
    assert all(a >= 0 and b > 0 for a, b in rates.values())
    # Adam reads and writes more per element than plain SGD
    assert rates["adam"][1] > rates["sgd"][1]


def test_estimated_rates_follow_the_bytes() -> None:
    h100 = load_device_spec("h100")
    fp32 = estimate_rates(h100, torch.float32)
    assert fp32["adam"][1] == pytest.approx(28 / h100.memory_bandwidth)
    assert fp32["sgd"][1] == pytest.approx(12 / h100.memory_bandwidth)
    # 16-bit parameters step on fp32 masters: more bytes per element
    assert estimate_rates(h100, torch.bfloat16)["adam"][1] > fp32["adam"][1]


def test_the_predicted_step_includes_each_stages_optimizer_step() -> None:
    spec = example_spec("mlp", layers=6)
    graph = autopipe.trace(spec.model, spec.example_inputs)
    profile = estimate(graph, spec.example_inputs, progress=False)
    per_tensor, per_element = 1e-4, 1e-7
    rated = dataclasses.replace(profile, optimizer={"adam": (per_tensor, per_element)})
    plan = plan_profile(rated, num_stages=2, microbatches=4)
    bare = plan_profile(dataclasses.replace(profile, optimizer={}), num_stages=2, microbatches=4)
    assert plan.stage_of == bare.stage_of  # the ILP does not see the step yet: same cuts
    params = dict(spec.model.named_parameters())
    steps = []
    for s in plan.stages:
        held = {p for n in s.nodes if n in graph.by_name for p in graph.by_name[n].params}
        steps.append(len(held) * per_tensor + sum(params[p].numel() for p in held) * per_element)
    costs, _ = plan_costs(bare)
    expected = simulate([dataclasses.replace(c, optimizer_s=o) for c, o in zip(costs, steps)],
                        schedule="1f1b", microbatches=4).iteration_s
    assert plan.predicted.iteration_s == pytest.approx(expected, rel=1e-9)
    assert plan.predicted.iteration_s > bare.predicted.iteration_s
