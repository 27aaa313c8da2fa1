"""Tests for autopipe/partition/baselines.py: uniform layers and balanced parameters."""

from __future__ import annotations

from autopipe.partition import baselines
from autopipe.partition.costs import violations
from autopipe.partition.problem import Config, from_profile
from autopipe.partition.synthetic import synthetic_profile
from autopipe.plan_format import Device


def _problem(p: int, blocks: int = 100, layer_size: int = 10):
    prof = synthetic_profile(blocks, seed=3, layer_size=layer_size)
    cfg = Config(num_stages=p, microbatches=2 * p, schedule="1f1b",
                 devices=tuple(Device(name=f"d{i}", memory=0) for i in range(p)), link_bandwidth=25e9)
    return from_profile(prof, cfg)


def test_uniform_gives_equal_layer_counts() -> None:
    problem = _problem(4)  # 10 layers "layers.0" … "layers.9"
    split = baselines.uniform(problem)
    assert split is not None and not violations(problem, split)
    per_stage = [set() for _ in range(4)]
    for b, s in zip(problem.blocks, split):
        module = problem.node_module[b.nodes[0]]
        if module:
            per_stage[s].add(module)
    assert [len(m) for m in per_stage] == [3, 3, 2, 2]


def test_params_balances_parameter_bytes() -> None:
    problem = _problem(4)
    split = baselines.params(problem)
    assert split is not None and not violations(problem, split)
    totals = [0] * 4
    for b, s in zip(problem.blocks, split):
        totals[s] += sum(problem.param_bytes[q] for q in b.params)
    uniform = baselines.uniform(problem)
    assert uniform is not None
    u_totals = [0] * 4
    for b, s in zip(problem.blocks, uniform):
        u_totals[s] += sum(problem.param_bytes[q] for q in b.params)
    assert max(totals) <= max(u_totals)


def test_too_few_layers_falls_back_to_blocks() -> None:
    problem = _problem(4, blocks=30, layer_size=15)  # 2 layers, 4 stages
    split = baselines.uniform(problem)
    assert split is not None and not violations(problem, split)
    assert baselines.layers(problem)[-1] == problem.num_real - 1
