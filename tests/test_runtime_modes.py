"""Tests for autopipe/runtime/modes.py: ops whose training mode was traced in follow train() and eval()."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import autopipe
from autopipe.runtime.draws import drawing, seed_draws
from autopipe.runtime.modes import FollowsMode, follow_modes, modeless_draws
from autopipe.runtime.split import split_graph
from autopipe.runtime.validate import model_constants

from .runtime_cases import Case
from .runtime_plans import hand_plan
from .zoo import ZOO


def _stages(spec: autopipe.ModelSpec, stages: int = 2) -> tuple[autopipe.Graph, list[nn.Module]]:
    """The model traced (in training mode, as autopipe traces it), split, each stage seeded
    and following its mode, as ``build_pipeline`` makes them."""
    graph = autopipe.trace(spec.model, spec.example_inputs, spec.example_kwargs)
    split = split_graph(graph, hand_plan(graph, stages), model_constants(graph, spec))
    modules = [st.module for st in split.stages]
    for m in modules:
        seed_draws(m)
        follow_modes(m)
    return graph, modules


def _run(graph: autopipe.Graph, modules: list[nn.Module], spec: autopipe.ModelSpec) -> object:
    inputs, _ = spec.batch(1, 0)
    values = tuple(v for v in graph.flat_inputs(tuple(inputs), spec.example_kwargs) if isinstance(v, torch.Tensor))
    with torch.no_grad(), drawing(0, 1, 0):
        for m in modules:
            values = m(*values)
    return graph.unflatten_output(list(values))


@pytest.mark.parametrize("name", ["gpt2", "resnet"])
def test_stages_in_eval_mode_compute_the_model_in_eval_mode(name: str) -> None:
    """GPT-2 with dropout 0.1 (dropout and attention dropout traced on) and Hugging Face's
    ResNet (batch norms traced normalising by the batch): in eval mode the stages give the
    eager model's eval output, and leave the running statistics alone."""
    spec = Case("gpt2", 2, knobs={"dropout": 0.1}).spec() if name == "gpt2" else ZOO[name]()
    assert spec.model.training
    graph, modules = _stages(spec)
    assert sum(isinstance(n.target, FollowsMode) for m in modules for n in m.graph.nodes) > 0
    buffers = {k: v.clone() for m in modules for k, v in m.named_buffers()}
    for m in modules:
        m.train(False)
    out = _run(graph, modules, spec)
    for m in modules:
        for k, v in m.named_buffers():
            assert torch.equal(v, buffers[k]), k
    spec.model.eval()
    inputs, _ = spec.batch(1, 0)
    with torch.no_grad():
        expected = spec.model(*inputs)
    torch.testing.assert_close(out.logits, expected.logits)  # type: ignore[attr-defined]
    # back in training mode they draw and normalise by the batch again, as traced
    for m in modules:
        m.train(True)
    train_out = _run(graph, modules, spec)
    assert not torch.allclose(train_out.logits, expected.logits)  # type: ignore[attr-defined]


def test_a_flag_traced_off_stays_off_and_batch_norm_without_statistics_uses_the_batch() -> None:
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.BatchNorm1d(4, track_running_stats=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.norm(nn.functional.dropout(x, 0.5, training=False))

    m = M()
    graph = autopipe.trace(m, (torch.randn(8, 4),), frontend="export")
    assert follow_modes(graph.gm) >= 1
    x = torch.randn(8, 4)
    for module in graph.gm.modules():
        module.training = False
    m.eval()
    torch.testing.assert_close(graph.gm(x)[0], m(x))


def test_random_nodes_that_no_mode_switches_off_are_named() -> None:
    """A drop path traced taking its training branch keeps its ``rand`` in evaluation
    (``Pipe.train(False)`` warns, naming it); GPT-2's dropouts all follow the mode."""
    _, modules = _stages(Case("gpt2", 2, knobs={"dropout": 0.1}).spec())
    assert [n for m in modules for n in modeless_draws(m)] == []
    g = autopipe.trace(nn.Sequential(nn.Linear(4, 4), _DropPath()), (torch.randn(2, 4),), frontend="export")
    seed_draws(g.gm)
    follow_modes(g.gm)
    assert modeless_draws(g.gm) == ["rand"]


class _DropPath(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        keep = (0.8 + torch.rand(x.shape[0], 1)).floor()
        return x / 0.8 * keep


def test_a_mode_left_to_its_default_follows_too() -> None:
    """``F.dropout(x, 0.5)`` (training by its default, as symbolic_trace records it)."""
    class M(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return nn.functional.dropout(x, 0.5)

    graph = autopipe.trace(M(), (torch.randn(8, 4),), frontend="fx")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the get_attr of ``training`` is made without fx's warning
        assert follow_modes(graph.gm) == 1
    x = torch.randn(8, 4)
    graph.gm.train(False)
    assert torch.equal(graph.gm(x)[0], x)
    graph.gm.train(True)
    assert not torch.equal(graph.gm(x)[0], x)
