"""Tests for autopipe/_gc.py: trace and estimate run without automatic garbage collection."""

from __future__ import annotations

import gc

import pytest
import torch

import autopipe
from autopipe._gc import collections_paused
from autopipe.profile import estimate


class _Spy(torch.nn.Module):
    """Records whether the collector was on each time it runs."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
        self.seen: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(gc.isenabled())
        return self.lin(x)


def test_trace_runs_without_collections_and_restores_the_collector() -> None:
    model = _Spy()
    assert gc.isenabled()
    graph = autopipe.trace(model, (torch.randn(2, 4),))
    assert model.seen and not any(model.seen)
    assert gc.isenabled()
    estimate(graph, (torch.randn(2, 4),), progress=False)
    assert gc.isenabled()


def test_a_paused_function_leaves_the_collector_as_it_found_it() -> None:
    @collections_paused
    def boom() -> None:
        assert not gc.isenabled()
        raise ValueError("inside")

    with pytest.raises(ValueError):
        boom()
    assert gc.isenabled()
    gc.disable()
    try:
        with pytest.raises(ValueError):
            boom()
        assert not gc.isenabled()
    finally:
        gc.enable()
