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


def test_the_plan_charges_each_stage_its_optimizer_step() -> None:
    spec = example_spec("mlp", layers=6)
    graph = autopipe.trace(spec.model, spec.example_inputs)
    profile = estimate(graph, spec.example_inputs, progress=False)
    per_tensor, per_element = 1e-4, 1e-7
    plan = plan_profile(dataclasses.replace(profile, optimizer={"adam": (per_tensor, per_element)}),
                        num_stages=2, microbatches=4)
    bare = plan_profile(dataclasses.replace(profile, optimizer={}), num_stages=2, microbatches=4)
    params = dict(spec.model.named_parameters())
    for s in plan.stages:
        held = {p for n in s.nodes if n in graph.by_name for p in graph.by_name[n].params}
        assert s.optimizer_s == pytest.approx(
            len(held) * per_tensor + sum(params[p].numel() for p in held) * per_element, rel=1e-12)
    assert all(s.optimizer_s == 0 for s in bare.stages)
    # the step the solver optimised is the simulated one, optimizer steps included
    costs, _ = plan_costs(plan)
    assert [c.optimizer_s for c in costs] == [s.optimizer_s for s in plan.stages]
    simulated = simulate(costs, schedule="1f1b", microbatches=4).iteration_s
    assert plan.predicted.iteration_s == pytest.approx(simulated, rel=1e-9)
    assert plan.solver.objective_s == pytest.approx(simulated, rel=1e-9)
    assert plan.predicted.iteration_s > bare.predicted.iteration_s
