"""Tests for autopipe/profile/loss.py: the loss profiled on its own and charged to the last stage."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import autopipe
from autopipe.partition.planner import plan_profile
from autopipe.profile import Profile, estimate, measure
from autopipe.spec import example_target

from .conftest import EXAMPLES, example_spec
from .runtime_cases import TINY


def test_a_32k_head_makes_the_loss_cost_more_than_a_block(tmp_path: Path) -> None:
    spec = example_spec("tied_lm", layers=2)
    graph = autopipe.trace(spec.model, spec.example_inputs)
    p = measure(graph, spec.example_inputs, loss_fn=spec.loss_fn, target=example_target(spec),
                warmup=1, repeats=3, progress=False)
    assert p.loss is not None
    loss = p.loss.forward_s + p.loss.backward_s
    blocks = [n.forward_s + n.backward_s for n in p.nodes if n.module.startswith("blocks.")]
    assert loss > 0 and loss > max(blocks)
    assert p.loss.input_bytes == 2 * 64 * 32768 * 4  # the logits it reads
    assert p.loss.activation_bytes >= p.loss.input_bytes  # cross-entropy keeps its softmax
    p.save(tmp_path / "p.json")
    assert Profile.load(tmp_path / "p.json").loss == p.loss
    e = estimate(graph, spec.example_inputs, loss_fn=spec.loss_fn, target=example_target(spec),
                 progress=False)
    assert e.loss is not None and e.loss.forward_s > 0 and e.loss.backward_s > 0
    assert e.loss.activation_bytes == p.loss.activation_bytes


@pytest.mark.parametrize("name", EXAMPLES)
def test_the_loss_lands_on_the_last_stage(name: str) -> None:
    spec = example_spec(name, **TINY[name])
    graph = autopipe.trace(spec.model, spec.example_inputs, spec.example_kwargs)
    p = estimate(graph, spec.example_inputs, spec.example_kwargs, loss_fn=spec.loss_fn,
                 target=example_target(spec), progress=False)
    assert p.loss is not None and p.loss.forward_s > 0
    without = plan_profile(dataclasses.replace(p, loss=None), num_stages=2, microbatches=4)
    plan = plan_profile(p, num_stages=2, microbatches=4)
    if plan.stage_of == without.stage_of:  # the same cuts: the last stage carries exactly the loss
        assert plan.stages[-1].forward_s == pytest.approx(without.stages[-1].forward_s + p.loss.forward_s)
        assert plan.stages[-1].backward_s == pytest.approx(without.stages[-1].backward_s + p.loss.backward_s)
        assert plan.stages[0].forward_s == pytest.approx(without.stages[0].forward_s)
    assert plan.predicted.iteration_s > without.predicted.iteration_s
