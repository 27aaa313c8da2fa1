"""Tests for autopipe/trace/aliasing.py: the order that in-place writes add to the data edges,
kept by the planner and checked by the runtime ([Note: in-place writes order the graph])."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

import autopipe
from autopipe.errors import PlanError
from autopipe.partition.assemble import sends
from autopipe.partition.brute import partitions
from autopipe.partition.coarsen import coarsen
from autopipe.partition.problem import Config, from_profile
from autopipe.plan_format import Device
from autopipe.profile import estimate
from autopipe.profile.profile import Profile
from autopipe.runtime.split import split_graph

from .runtime_cases import pipeline_backward
from .runtime_plans import plan_from_cuts, valid_cuts
from .zoo import qwen2_moe


class Halves(nn.Module):
    """DeepSeek-V3's key pattern: an empty buffer, both halves written in place, then read
    through the buffer itself (no data edge from the writes to the reader)."""

    def __init__(self) -> None:
        super().__init__()
        self.left = nn.Linear(8, 8)
        self.right = nn.Linear(8, 8)
        self.mix = nn.Linear(16, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        buf = x.new_empty(x.shape[0], 16)
        buf[:, :8] = self.left(x)
        buf[:, 8:] = self.right(x)
        return self.head(torch.relu(self.mix(buf)))


def _graph() -> autopipe.Graph:
    torch.manual_seed(0)
    return autopipe.trace(Halves(), (torch.randn(4, 8),))


def _writes(graph: autopipe.Graph) -> list[str]:
    """The two writes into the buffer (``copy_`` into a slice, as exported)."""
    return [n.name for n in graph.nodes if n.target in ("aten.copy_.default", "operator.setitem")]


def test_writes_are_ordered_before_the_later_readers_of_their_storage() -> None:
    graph = _graph()
    index = {n.name: i for i, n in enumerate(graph.nodes)}
    writes = _writes(graph)
    reader = next(n.name for n in graph.nodes if n.module == "mix")
    assert len(writes) == 2 and set(graph.order) >= {(writes[0], writes[1]), (writes[1], reader)}
    assert all(index[a] < index[b] for a, b in graph.order)
    data = set(graph.dag.edges)
    assert not data & set(graph.order)  # only what the data edges leave out
    assert all((w, reader) not in data for w in writes)


def test_the_planner_keeps_the_order_and_sends_nothing_for_it() -> None:
    graph = _graph()
    profile = estimate(graph, (torch.randn(4, 8),), progress=False)
    assert profile.order == tuple(graph.order)
    assert Profile.from_json(profile.to_json()).order == profile.order
    config = Config(num_stages=2, microbatches=2, schedule="1f1b", link_bandwidth=1e9,
                    devices=(Device(name="cpu", memory=2**30), Device(name="cpu", memory=2**30)))
    problem = from_profile(profile, config)
    block = {n: i for i, b in enumerate(problem.blocks) for n in b.nodes}
    broken = lambda stage_of: any(stage_of[block[a]] > stage_of[block[b]]  # noqa: E731
                                  for a, b in graph.order)
    assert not any(broken(s) for s in partitions(problem))
    # without it, a valid cut runs the reader in stage 0 and a write in stage 1
    unordered = from_profile(dataclasses.replace(profile, order=()), config)
    assert any(broken(s) for s in partitions(unordered))
    coarse = coarsen(problem, 4)  # merged blocks keep what is only an order
    assert coarse.size == 4 and any(v.order_only for v in coarse.values)
    assert all(v.bytes == 0 for v in coarse.values if v.order_only)
    for stage_of in partitions(problem):
        assert all(s.bytes > 0 or s.tensor not in {a for a, _ in graph.order}
                   for stage in sends(problem, stage_of) for s in stage)
    plan = autopipe.plan(Halves(), (torch.randn(4, 8),), num_stages=2, microbatches=2,
                         profile="estimate")
    stage_of = plan.stage_of
    assert all(stage_of[a] <= stage_of[b] for a, b in graph.order)


def test_a_plan_that_breaks_the_order_is_refused() -> None:
    graph = _graph()
    writes = _writes(graph)
    reader = next(n.name for n in graph.nodes if n.module == "mix")
    plan = plan_from_cuts(graph, [[n.name for n in graph.nodes].index(reader)])
    first, second = plan.stages
    assert writes[1] in first.nodes
    moved = (dataclasses.replace(first, nodes=tuple(n for n in first.nodes if n != writes[1])),
             dataclasses.replace(second, nodes=(writes[1], *second.nodes)))
    with pytest.raises(PlanError, match=f"must run after {writes[1]!r} in the later stage 1"):
        split_graph(graph, dataclasses.replace(plan, stages=moved))


@pytest.mark.parametrize("split_backward", [False, True])
def test_a_buffer_and_its_slice_sent_together_stay_one_storage(split_backward: bool) -> None:
    """Cut between the buffer's slice and the write into it: the next stage receives the
    buffer alone and slices it again, so the write lands in what the reader reads, forward
    and backward, at every cut ([Note: aliases received together] in runtime/split.py)."""
    graph = _graph()
    x = torch.randn(4, 8)
    params = list(graph.gm.parameters())
    expected = graph.gm(x)[0].square().mean()
    grads = torch.autograd.grad(expected, params)
    names = [n.name for n in graph.nodes]
    first_slice = next(n.name for n in graph.nodes if n.target == "aten.slice.Tensor")
    for cut in valid_cuts(graph):
        plan = (plan_from_cuts(graph, [cut], schedule="zb-h1", ranks=[0, 1]) if split_backward
                else plan_from_cuts(graph, [cut]))
        split = split_graph(graph, plan)
        if names[cut] == first_slice:
            assert "new_empty" in split.stages[1].inputs and first_slice not in split.stages[1].inputs
        for p in params:
            p.grad = None
        loss = pipeline_backward(split, [x], lambda outs: outs[0].square().mean(),
                                 split_backward=split_backward)
        torch.testing.assert_close(loss, expected, msg=f"cut after {names[cut]}")
        for p, g in zip(params, grads):
            torch.testing.assert_close(p.grad, g, msg=f"cut after {names[cut]}")


class _TransposedWeight(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(8, 16))
        self.lin = torch.nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(self.lin(x), self.w.t()).transpose(0, 1)


def test_views_of_parameters_are_marked() -> None:
    """A view of a parameter (``w.t()``) is marked ``param_view``, a view of an activation is
    not, through fx and through an exported Hugging Face MoE's experts (``gate_up_proj``
    transposed for ``_grouped_mm``); a profile carries the mark ([Note: a parameter's view is
    kept free] in ``autopipe.partition.costs``)."""
    graph = autopipe.trace(_TransposedWeight(), (torch.randn(4, 16),))
    assert {n.name for n in graph.nodes if n.param_view} == {"t"}
    spec = qwen2_moe()
    moe = autopipe.trace(spec.model, spec.example_inputs, example_kwargs=spec.example_kwargs)
    marked = [n for n in moe.nodes if n.param_view]
    assert moe.frontend == "export" and marked
    assert all(n.target == "aten.transpose.int" and n.shared_params + n.params for n in marked)
    prof = Profile.from_json(json.loads(json.dumps(estimate(graph, (torch.randn(4, 16),), progress=False).to_json())), source="test")
    assert [n.name for n in prof.nodes if n.param_view] == ["t"]
