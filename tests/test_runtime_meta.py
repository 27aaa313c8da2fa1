"""Tests for autopipe/runtime/meta.py: stage input/output metadata without running the model."""

from __future__ import annotations

import pytest
import torch

from autopipe.runtime.meta import stage_metas
from autopipe.runtime.split import split_graph

from .runtime_cases import Case


def test_metas_match_a_real_run() -> None:
    spec, graph, plan = Case("gpt2", 4).build()
    split = split_graph(graph, plan)
    flat = graph.flat_inputs(spec.example_inputs)
    metas = stage_metas(split, flat)
    values = tuple(flat)
    for st, meta in zip(split.stages, metas):
        assert [tuple(t.shape) for t in meta.inputs] == [tuple(v.shape) for v in values]
        values = tuple(v.detach().requires_grad_(v.requires_grad) for v in st.module(*values))
        assert [(tuple(t.shape), t.dtype, t.stride()) for t in meta.outputs] == \
               [(tuple(v.shape), v.dtype, v.stride()) for v in values]
        assert [t.requires_grad for t in meta.outputs] == [v.requires_grad for v in values]
        assert all(t.device.type == "meta" for t in meta.inputs + meta.outputs)
    # integer and boolean values cross cuts without gradients, activations with them
    sent = [t for m in metas[:-1] for t in m.outputs]
    assert any(not t.is_floating_point() for t in sent)
    assert all(t.requires_grad == t.is_floating_point() for t in sent if t.dim() == 3)


def test_metas_leave_batch_norm_state_alone() -> None:
    spec, graph, plan = Case("resnet", 2).build()
    split = split_graph(graph, plan)
    before = {k: v.clone() for k, v in graph.gm.named_buffers()}
    stage_metas(split, graph.flat_inputs(spec.example_inputs))
    for k, v in graph.gm.named_buffers():
        assert torch.equal(v, before[k]), k


class _Asserting(torch.nn.Module):
    """A check by value in its forward, kept by symbolic_trace as a ``torch._assert`` node."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(8, 8)
        self.b = torch.nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        torch._assert((h.abs() < 1e6).all(), "activations blew up")
        return self.b(h)


def test_metas_and_estimates_pass_over_checks_by_value() -> None:
    """Fake and meta tensors have no values to check ([Note: runtime checks on meta
    tensors]): at every cut, even one between the condition and its check, the stages get
    their shapes, and the estimate prices the model; a real run still checks."""
    import autopipe
    from autopipe.profile import estimate
    from autopipe.trace.graph import checks_only

    from .runtime_plans import plan_from_cuts, valid_cuts

    x = torch.randn(4, 8)
    graph = autopipe.trace(_Asserting(), (x,))
    assert graph.frontend == "fx" and "_assert" in checks_only(graph.gm)
    for cut in valid_cuts(graph):
        split = split_graph(graph, plan_from_cuts(graph, [cut]))
        assert [tuple(t.shape) for t in stage_metas(split, [x])[-1].outputs] == [(4, 2)]
    assert estimate(graph, (x,), progress=False).nodes
    with torch.no_grad():
        graph.gm.a.weight.fill_(1e9)
    with pytest.raises(AssertionError, match="activations blew up"):
        graph.gm(x)
