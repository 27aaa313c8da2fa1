"""Tests for autopipe/trace/_vmap.py: a ``torch.vmap`` region of an exported graph is one node,
so no cut falls inside it ([Note: vmap regions])."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import autopipe
from autopipe.runtime.meta import stage_metas
from autopipe.runtime.split import split_graph

from .runtime_cases import pipeline_backward
from .runtime_plans import plan_from_cuts, remaking, valid_cuts


class NearMask(nn.Module):
    """T5Gemma 2's encoder mask, small: which positions are near which, made by two nested
    ``torch.vmap`` over the positions (transformers' masking_utils), then applied."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        i = torch.arange(x.shape[1])
        near = torch.vmap(torch.vmap(lambda q, k: (q - k).abs() < 2, in_dims=(None, 0)), in_dims=(0, None))
        return self.proj(x).masked_fill(~near(i, i), 0.0)


def _graph() -> tuple[autopipe.Graph, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(2, 8, 8)
    return autopipe.trace(NearMask(), (x,)), x


def test_a_vmap_region_is_one_node() -> None:
    graph, _ = _graph()
    assert graph.frontend == "export"
    assert not any("nesting" in n.target or "batch_dim" in n.target for n in graph.nodes)
    assert [n.target for n in graph.nodes if n.op == "call_module"] == ["vmap_0"]


@pytest.mark.parametrize("remake", [False, True])
def test_every_cut_runs_like_the_whole_model(remake: bool) -> None:
    """Cut inside the region, stage 0 stayed in a vmap level (its sent tensors refused
    ``requires_grad_``) and a stage that made the mask again ran ``_add_batch_dim`` alone."""
    graph, x = _graph()
    params = list(graph.gm.parameters())
    expected = graph.gm(x)[0].square().sum()
    grads = torch.autograd.grad(expected, params)
    for cut in valid_cuts(graph):
        plan = plan_from_cuts(graph, [cut])
        split = split_graph(graph, remaking(graph, plan) if remake else plan, {})
        stage_metas(split, [x])
        for p in params:
            p.grad = None
        loss = pipeline_backward(split, [x], lambda outs: outs[0].square().sum())
        torch.testing.assert_close(loss, expected)
        for p, g in zip(params, grads):
            torch.testing.assert_close(p.grad, g)
        assert torch._C._functorch.maybe_current_level() is None, graph.nodes[cut].name
