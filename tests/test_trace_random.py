"""Draws from constant arguments stay draws under symbolic_trace ([Note: draws from constant
arguments] in ``autopipe.trace._random``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import autopipe
from autopipe.errors import TraceError


class _Depth(nn.Module):
    """Stochastic depth written with a draw of no traced argument."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        keep = (torch.rand([]) > 0.5).float() + 0.1 * torch.randn(1)
        return self.b(h * keep)


class _Branch(nn.Module):
    """LayerDrop: a Python branch on a draw."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.rand([]) < 0.5:
            return x
        return self.a(x)


def test_a_draw_of_constant_arguments_is_a_node_not_a_constant() -> None:
    """Until 2026-12-07 ``torch.rand([])`` ran once while tracing and its value was baked
    into the graph (``get_attr _tensor_constant0``): every step drew the same number."""
    original = torch.rand
    graph = autopipe.trace(_Depth(), (torch.randn(4, 8),), frontend="fx")
    assert torch.rand is original  # restored after tracing
    nodes = list(graph.gm.graph.nodes)
    assert {n.target for n in nodes if n.op == "call_function"} >= {torch.rand, torch.randn}
    assert not [n for n in nodes if n.op == "get_attr" and "_tensor_constant" in str(n.target)]
    x = torch.ones(2, 8)
    outs = {tuple(graph.gm(x)[0].flatten().tolist()) for _ in range(8)}
    assert len(outs) > 1  # it draws on every call


def test_a_branch_on_a_draw_is_not_traced_into_one_path() -> None:
    """symbolic_trace took the branch its one draw chose, for good; now it cannot trace it,
    and neither can torch.export: the model must say how to trace it."""
    with pytest.raises(TraceError, match="cannot trace"):
        autopipe.trace(_Branch(), (torch.randn(4, 8),))
    assert isinstance(torch.rand([]), torch.Tensor)
