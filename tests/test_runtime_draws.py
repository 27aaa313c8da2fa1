"""Tests for autopipe/runtime/draws.py: random nodes draw per node, step and micro-batch.

The 2- and 4-rank jobs (tests/runtime_cases.py, the ``-dropout`` cases) train GPT-2 and
BERT with dropout on gloo ranks, recomputed, with a split backward and with replicas, and
compare them with ``reference_train``; these tests check the pieces in one process.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import autopipe
from autopipe.runtime.draws import SeededDraw, drawing, seed_draws, seeded_draws
from autopipe.runtime.split import split_graph

from .runtime_cases import Case, pipeline_backward

DROPOUT = {"dropout": 0.1}


class _Noisy(nn.Module):
    """Each way symbolic_trace records a draw: a module, a function, a method, a factory."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.drop(self.lin(x)) + 0.1 * torch.randn_like(x)
        y = F.dropout(y, 0.2, training=True)
        return y * torch.empty_like(y).bernoulli_(0.5) + F.dropout(y, 0.3, training=False)


def _gpt2_graph(**knobs: object) -> tuple[autopipe.ModelSpec, autopipe.Graph]:
    spec = Case("gpt2", 2, knobs=knobs).spec()
    return spec, autopipe.trace(spec.model, spec.example_inputs)


def test_each_random_node_draws_for_its_seed_step_and_microbatch() -> None:
    graph = autopipe.trace(_Noisy(), (torch.randn(4, 8),))
    x = torch.randn(4, 8)
    with seeded_draws(graph.gm) as n:
        assert n == 4  # the dropout module, F.dropout in training, randn_like, bernoulli_
        before = torch.get_rng_state()

        def run(seed: int, step: int, mb: int) -> torch.Tensor:
            with drawing(seed, step, mb):
                out: torch.Tensor = graph.gm(x)[0]
            return out

        first = run(0, 1, 0)
        assert torch.equal(first, run(0, 1, 0))
        for other in ((1, 1, 0), (0, 2, 0), (0, 1, 1)):
            assert not torch.equal(first, run(*other)), other
        # the process's generator is where it was: nothing else's numbers move
        assert torch.equal(torch.get_rng_state(), before)
        # outside a step, the process's generator draws, as before
        torch.manual_seed(3)
        a = graph.gm(x)[0]
        torch.manual_seed(3)
        assert torch.equal(a, graph.gm(x)[0])
        assert not torch.equal(a, first)


def test_seeded_draws_puts_the_nodes_back() -> None:
    graph = autopipe.trace(_Noisy(), (torch.randn(4, 8),))
    code = graph.gm.code
    with seeded_draws(graph.gm):
        assert graph.gm.code != code and "seeded_drop" in graph.gm.code
    assert graph.gm.code == code
    assert not any(isinstance(n.target, SeededDraw) for n in graph.gm.graph.nodes)


def test_nodes_that_draw_nothing_are_left_as_they_are() -> None:
    """Attention without dropout and dropout of probability 0 (what torch.export records for
    GPT-2 built without dropout) draw nothing: no node is rewritten."""
    _, graph = _gpt2_graph()
    assert any(n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload)
               and torch.Tag.nondeterministic_seeded in n.target.tags for n in graph.gm.graph.nodes)
    assert seed_draws(graph.gm) == []
    _, graph = _gpt2_graph(**DROPOUT)
    assert len(seed_draws(graph.gm)) == 7  # 5 dropouts and 2 attentions with dropout_p=0.1


@pytest.mark.parametrize("recompute", ["none", "full"])
def test_stages_draw_what_the_whole_model_draws(recompute: str) -> None:
    """GPT-2 with dropout split into 3 stages, each seeded, run one after another (recomputed:
    its regions draw again in backward): the loss and every gradient of the whole graph."""
    spec, graph, plan = Case("gpt2", 3, knobs=DROPOUT, recompute=recompute).build()
    assert plan.recomputes == (recompute == "full")
    split = split_graph(graph, plan)
    for st in split.stages:
        seed_draws(st.module)
    inputs, target = spec.batch(1, 0)
    flat = [v for v in graph.flat_inputs(tuple(inputs), spec.example_kwargs) if isinstance(v, torch.Tensor)]
    gm = graph.gm
    with seeded_draws(gm), drawing(5, 2, 1):
        loss_ref = spec.loss_fn(graph.unflatten_output(gm(*flat)), target)
        grads_ref = torch.autograd.grad(loss_ref, list(gm.parameters()))
    with drawing(5, 2, 1):
        loss = pipeline_backward(split, flat, lambda outs: spec.loss_fn(graph.unflatten_output(outs), target))
    torch.testing.assert_close(loss, loss_ref, rtol=0, atol=0)
    for (name, p), r in zip(gm.named_parameters(), grads_ref):
        torch.testing.assert_close(p.grad, r, msg=name)
    # the control: another micro-batch draws other masks, so the check can fail
    for p in gm.parameters():
        p.grad = None
    with drawing(5, 2, 2):
        other = pipeline_backward(split, flat, lambda outs: spec.loss_fn(graph.unflatten_output(outs), target))
    assert not torch.equal(other, loss_ref)
