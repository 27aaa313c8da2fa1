"""autopipe/runtime/packing.py: each cut's values of one dtype cross as one tensor ([Note: one message per cut])."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

import autopipe
from autopipe.runtime.meta import stage_metas
from autopipe.runtime.packing import pack, pack_cuts, pack_groups, unpack
from autopipe.runtime.prepare import prepare
from autopipe.runtime.split import split_graph

from .conftest import ROOT
from .runtime_cases import Case, pipeline_backward
from .runtime_plans import plan_from_cuts


def test_groups_are_the_kinds_two_or_more_values_share_in_order() -> None:
    f, g, i = (torch.float32, True), (torch.float32, False), (torch.int64, False)
    assert pack_groups([f, i, f, g, i, f, g]) == [[0, 2, 5], [1, 4], [3, 6]]
    assert pack_groups([f, g, i]) == []
    assert pack_groups([f, None, f, None]) == [[0, 2]]


def test_unpacked_values_are_views_whose_gradients_come_back_as_one_tensor() -> None:
    a, b, c = torch.randn(2, 3), torch.randn(4), torch.randn(())
    packed = pack(a, b.view(2, 2).t(), c)  # a strided value packs by its elements
    assert packed.shape == (11,)
    leaf = packed.detach().requires_grad_(True)
    x, y, z = unpack(leaf, [(2, 3), (2, 2), ()])
    assert all(v._base is leaf for v in (x, y, z))
    torch.testing.assert_close(x, a)
    torch.testing.assert_close(y, b.view(2, 2).t())
    torch.testing.assert_close(z, c)
    (x.sum() * 1 + (y * 2).sum() + z * 3).backward()
    assert leaf.grad is not None and leaf.grad.is_contiguous()
    torch.testing.assert_close(leaf.grad, torch.tensor([1.0] * 6 + [2.0] * 4 + [3.0]))


class _Mixed(nn.Module):
    """Three float values with a gradient, two integer ones and a float without a gradient
    that a later stage sums as integers (as Mixtral's count of tokens per expert) cross its middle."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 6)

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        h1, h2, h3 = self.a(x), self.b(x).t(), self.c(x)[:, :2]
        i1, i2 = ids + 1, ids * 2
        counts = torch.histc(ids.float(), bins=4, min=0, max=3)
        x = torch.relu(x)  # the cut: every value above crosses it
        out = h1 + h2.t() + h3.sum() + x + counts.cumsum(0, dtype=torch.int32).sum()
        return out * (i1 + i2).float().unsqueeze(1)


def test_a_cut_sends_one_tensor_per_kind_and_the_stages_compute_the_model() -> None:
    model = _Mixed()
    x, ids = torch.randn(4, 6), torch.arange(4)
    graph = autopipe.trace(model, (x, ids))
    cut = next(i for i, n in enumerate(graph.nodes) if n.target.endswith("relu")) - 1
    plan = plan_from_cuts(graph, [cut])
    loose, packed = split_graph(graph, plan), split_graph(graph, plan)
    loose_metas = stage_metas(loose, [x, ids])
    metas = pack_cuts(packed, stage_metas(packed, [x, ids]))
    found = stage_metas(packed, [x, ids])  # what the packed stages send and take, run on fakes
    for mine, theirs in zip(metas, found):
        for a, b in zip((*mine.inputs, *mine.outputs), (*theirs.inputs, *theirs.outputs), strict=True):
            assert (a.shape, a.stride(), a.dtype, a.requires_grad) == (b.shape, b.stride(), b.dtype, b.requires_grad)
    assert len(packed.stages[1].inputs) == len(loose_metas[1].inputs) == 7  # h1, h2, h3, i1, i2, counts, x
    kinds = [(t.dtype, t.requires_grad) for t in metas[0].outputs]
    assert sorted(kinds, key=str) == sorted([(torch.float32, True), (torch.int64, False), (torch.float32, False)],
                                            key=str)
    for kind, t in zip(kinds, metas[0].outputs):
        assert t.numel() == sum(u.numel() for u in loose_metas[0].outputs if (u.dtype, u.requires_grad) == kind)
    assert [tuple(t.shape) for t in metas[1].inputs] == [tuple(t.shape) for t in metas[0].outputs]
    expected = graph.gm(x, ids)[0].square().sum()
    params = list(graph.gm.parameters())
    grads = torch.autograd.grad(expected, params)
    found = []
    for split in (packed, loose):
        for p in params:
            p.grad = None
        loss = pipeline_backward(split, [x, ids], lambda outs: outs[0].square().sum())
        torch.testing.assert_close(loss, expected)
        for p, r in zip(params, grads):
            torch.testing.assert_close(p.grad, r, rtol=1e-5, atol=1e-4)
        found.append([p.grad for p in params])
    assert all(torch.equal(a, b) for a, b in zip(*found))  # packing moves values, computes nothing


def test_the_unets_skips_cross_a_cut_as_one_message() -> None:
    spec, graph, plan = Case("unet", 2).build()
    prepared = prepare(spec, plan, 2, graph)
    assert len(prepared.split.stages[1].inputs) >= 3 and len(prepared.metas[0].outputs) == 1
    loose = prepare(spec, plan, 2, graph, pack=False)
    assert len(loose.metas[0].outputs) == len(prepared.split.stages[1].inputs)
    assert prepared.metas[0].outputs[0].numel() == sum(t.numel() for t in loose.metas[0].outputs)


@pytest.mark.distributed
def test_the_benchmark_prints_each_way() -> None:
    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_cut_messages", "--tensors", "3",
                          "--floats", "64", "--steps", "5"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [ln for ln in out.stdout.splitlines() if " KiB " in ln]
    assert [r.split("KiB")[1].split("  ")[1].strip() for r in rows] == ["one tensor", "packed", "one by one"]
    assert all(float(r.split()[-1]) > 0 and float(r.split()[-2]) > 0 for r in rows)  # / one tensor, pred/med
    assert len({r.split(" ms")[0].split()[-1] for r in rows[1:]}) == 1  # packed, one by one: one plan, one prediction
