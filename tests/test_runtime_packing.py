"""autopipe/runtime/packing.py: the values crossing a cut travel as one message ([Note: one message per cut])."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
import torch
from torch import nn

import autopipe
from autopipe.runtime.meta import StageMeta, stage_metas
from autopipe.runtime.packing import (
    Group,
    Kind,
    messages_per_cut,
    pack,
    pack_cuts,
    pack_groups,
    unpack,
)
from autopipe.runtime.prepare import prepare
from autopipe.runtime.split import Split, split_graph
from autopipe.schedule.plan_costs import traffic

from .conftest import ROOT
from .runtime_cases import CASES, Case, pipeline_backward
from .runtime_plans import plan_from_cuts


def _small(kinds: list[Kind | None]) -> list[Group]:
    """``pack_groups`` of values none of which the plan marks as going forward only."""
    return pack_groups(kinds)


def test_a_cut_is_one_message_of_the_heaviest_dtype_with_a_gradient() -> None:
    f, g, i, b = (torch.float32, True), (torch.float32, False), (torch.int64, False), (torch.bool, False)
    h = (torch.bfloat16, True)
    # the values of another dtype first (as their bytes), then the message's own
    assert _small([f, i, f, g, i, f, g]) == [Group(torch.float32, (1, 4, 0, 2, 3, 5, 6))]
    assert _small([b, f]) == [Group(torch.float32, (0, 1))]
    # two dtypes with a gradient: one message, of the dtype of more values (or bytes)
    assert _small([h, f, i, h]) == [Group(torch.bfloat16, (1, 2, 0, 3))]
    assert _small([h, f]) == [Group(torch.bfloat16, (1, 0))]  # a tie: the first
    assert pack_groups([h, f, i], nbytes=[64, 16, 8]) == [Group(torch.bfloat16, (1, 2, 0))]
    assert pack_groups([h, f, i], nbytes=[16, 64, 8]) == [Group(torch.float32, (0, 2, 1))]
    assert _small([i, b]) == [Group(torch.uint8, (0, 1))]  # bytes where none has a gradient
    assert _small([i, i]) == [Group(torch.int64, (0, 1))]
    assert _small([f, None, g, None]) == [Group(torch.float32, (0, 2))]
    assert _small([f, None]) == [] and _small([i]) == []


def test_values_the_plan_sends_forward_only_travel_in_a_message_of_their_own() -> None:
    f, g, i, b = (torch.float32, True), (torch.float32, False), (torch.int64, False), (torch.bool, False)
    # unmarked, a mask joins the hidden states, however large; marked, it travels alone
    assert pack_groups([f, b]) == pack_groups([f, b], [False, False]) == [Group(torch.float32, (1, 0))]
    assert pack_groups([f, b], [False, True]) == []  # each alone
    assert pack_groups([b, f, g], [True, False, False]) == [Group(torch.float32, (1, 2))]
    assert pack_groups([b, f, g], [True, False, True]) == [Group(torch.uint8, (0, 2))]
    # a mark on a value with a gradient is no mark; where none has one, all travel together
    assert pack_groups([f, f, b], [True, False, False]) == [Group(torch.float32, (2, 0, 1))]
    assert pack_groups([i, b], [True, False]) == [Group(torch.uint8, (0, 1))]


def test_unpacked_values_are_views_whose_gradients_come_back_as_one_tensor() -> None:
    a, b, c = torch.randn(2, 3), torch.randn(4), torch.randn(())
    packed = pack(torch.float32, a, b.view(2, 2).t(), c)  # a strided value packs by its elements
    assert packed.shape == (11,)
    leaf = packed.detach().requires_grad_(True)
    layout = [(torch.float32, (2, 3), True), (torch.float32, (2, 2), True), (torch.float32, (), False)]
    x, y, z = unpack(leaf, layout)
    assert all(v.untyped_storage().data_ptr() == leaf.untyped_storage().data_ptr() for v in (x, y, z))
    assert x._base is leaf and not z.requires_grad
    torch.testing.assert_close(x, a)
    torch.testing.assert_close(y, b.view(2, 2).t())
    torch.testing.assert_close(z, c)
    (x.sum() * 1 + (y * 2).sum()).backward()
    assert leaf.grad is not None and leaf.grad.is_contiguous()
    torch.testing.assert_close(leaf.grad, torch.tensor([1.0] * 6 + [2.0] * 4 + [0.0]))


@pytest.fixture(params=[False, True], ids=["subnormals", "flushed"])
def flush(request: pytest.FixtureRequest) -> Iterator[None]:
    """The test as it is, and with subnormal floats flushed, as CPU ranks run ([Note:
    subnormals in training]): an integer's bytes read as floats are mostly subnormal, and
    packing copies them, computing nothing."""
    if request.param and not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush subnormals")
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def test_values_of_other_dtypes_travel_as_their_bytes_to_the_bit(flush: None) -> None:
    mask = torch.tensor([[True, False, True]]).expand(3, 3)  # strided: packs by its elements
    ids = torch.tensor([-1, 2**40 + 7, 3])
    odd = torch.tensor([float("nan"), -0.0, 1e-45, float("inf")], dtype=torch.float64)  # bits a float op would change
    h = torch.randn(5, requires_grad=True)
    packed = pack(torch.float32, mask, ids, odd, h)
    assert packed.dtype == torch.float32 and packed.requires_grad
    assert packed.numel() == 16 // 4 + 32 // 4 + 32 // 4 + 5  # each of another dtype padded to 16 bytes
    leaf = packed.detach().requires_grad_(True)
    layout = [(t.dtype, tuple(t.shape), t.requires_grad) for t in (mask, ids, odd, h)]
    m, i, o, x = unpack(leaf, layout)
    assert all(v.untyped_storage().data_ptr() == leaf.untyped_storage().data_ptr() for v in (m, i, o, x))
    assert torch.equal(m, mask) and torch.equal(i, ids) and o.view(torch.int64).equal(odd.view(torch.int64))
    assert (m.dtype, i.dtype, o.dtype) == (torch.bool, torch.int64, torch.float64)
    assert not (m.requires_grad or i.requires_grad or o.requires_grad) and x.requires_grad
    (x * torch.arange(5.0)).sum().backward()
    assert leaf.grad is not None
    torch.testing.assert_close(leaf.grad, torch.cat([torch.zeros(20), torch.arange(5.0)]))
    packed.backward(leaf.grad)  # the sender's side: only the value with a gradient gets one
    torch.testing.assert_close(h.grad, torch.arange(5.0))


def test_a_value_of_another_dtype_keeps_its_gradient_to_the_bit(flush: None) -> None:
    """bfloat16 values with a gradient in a float32 message, and float32 ones in a bfloat16
    message: each side's gradients are those of the values sent alone, bit for bit, though
    the message's gradient holds bits of another dtype ([Note: one message per cut])."""
    torch.manual_seed(0)
    for carrier, other in [(torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32)]:
        own = torch.randn(3, 4, dtype=carrier, requires_grad=True)
        odd = torch.randn(5, dtype=other).mul(1e-38).requires_grad_(True)  # tiny: subnormal bits in the gradient
        wide = torch.randn(2, 3, dtype=other).t().requires_grad_(True)  # strided
        values = (odd, own, wide)
        packed = pack(carrier, *values)
        assert packed.dtype == carrier and packed.requires_grad
        leaf = packed.detach().requires_grad_(True)
        layout = [(t.dtype, tuple(t.shape), True) for t in values]
        got = unpack(leaf, layout)
        for g, t in zip(got, values):
            assert g.dtype == t.dtype and torch.equal(g, t) and g.requires_grad
        weights = [torch.randn(t.shape, dtype=t.dtype) for t in values]
        sum((g * w).float().sum() for g, w in zip(got, weights)).backward()
        assert leaf.grad is not None and leaf.grad.dtype == carrier
        packed.backward(leaf.grad)
        for t, w in zip(values, weights):
            assert t.grad is not None and t.grad.dtype == t.dtype
            assert torch.equal(t.grad, w)  # d(sum(t * w))/dt, to the bit


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


def test_a_cut_sends_one_message_and_the_stages_compute_the_model() -> None:
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
    (message,) = metas[0].outputs  # floats with and without a gradient, and integers as their bytes
    assert (message.dtype, message.requires_grad) == (torch.float32, True)
    ints = sum(u.numel() for u in loose_metas[0].outputs if u.dtype == torch.int64)
    assert message.numel() == sum(u.numel() for u in loose_metas[0].outputs if u.is_floating_point()) + 2 * ints
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


class _TwoPrecisions(nn.Module):
    """A float32 and a bfloat16 value with gradients, and an integer one, cross its middle."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 6).to(torch.bfloat16)

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        h, low, i = self.a(x), self.b(x.to(torch.bfloat16)), ids * 3
        x = torch.relu(x)  # the cut
        return (h + low.float() + x) * i.float().unsqueeze(1)


def _split_before_relu(model: nn.Module, alone: frozenset[str] = frozenset()
                       ) -> tuple[Split, Split, list[StageMeta], list[StageMeta], list[torch.Tensor]]:
    """``model`` traced at a batch of 4 and split in 2 before its relu: packed (and its metas;
    ``alone``: the values a plan marks as going forward only), and as it is (and its metas),
    and the inputs."""
    inputs = [torch.randn(4, 6), torch.arange(4)]
    graph = autopipe.trace(model, tuple(inputs))
    cut = next(i for i, n in enumerate(graph.nodes) if n.target.endswith("relu")) - 1
    plan = plan_from_cuts(graph, [cut])
    packed, loose = split_graph(graph, plan), split_graph(graph, plan)
    metas = pack_cuts(packed, stage_metas(packed, inputs), alone)
    return packed, loose, metas, stage_metas(loose, inputs), inputs


def _same_gradients(model: nn.Module, packed: Split, loose: Split, inputs: list[torch.Tensor]) -> None:
    """The packed and unpacked splits compute the model's loss and the same gradients, to the bit."""
    params = list(model.parameters())
    found = []
    for split in (packed, loose):
        for p in params:
            p.grad = None
        loss = pipeline_backward(split, inputs, lambda outs: outs[0].square().sum())
        torch.testing.assert_close(loss, model(*inputs).square().sum())
        found.append([p.grad.clone() for p in params if p.grad is not None])
    assert len(found[0]) == len(params) and all(torch.equal(a, b) for a, b in zip(*found, strict=True))


def test_values_with_gradients_of_two_dtypes_make_one_message() -> None:
    """The bfloat16 value travels as its bytes in the float32 message (h and x weigh more),
    and its gradient comes back in the message's, to the bit."""
    model = _TwoPrecisions()
    packed, loose, metas, loose_metas, inputs = _split_before_relu(model)
    assert len(loose_metas[0].outputs) == 4  # h, low, i and x
    assert [(t.dtype, t.requires_grad) for t in metas[0].outputs] == [(torch.float32, True)]
    _same_gradients(model, packed, loose, inputs)


class _LargeWithoutGradients(nn.Module):
    """A small float with a gradient crosses its middle beside 2 MiB of a mask and 2 MiB of integers."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        h, mask, many = self.a(x), (x.reshape(-1)[:1] > 0).expand(1 << 21), ids.repeat(1 << 16)
        x = torch.relu(x)  # the cut
        return (h + x) * (mask.float().mean() + many.float().mean())


@pytest.mark.parametrize("marked", [False, True], ids=["joined", "forward-only"])
def test_large_values_without_gradients_cross_as_one_message_of_bytes(marked: bool) -> None:
    model = _LargeWithoutGradients()
    probe = autopipe.trace(model, (torch.randn(4, 6), torch.arange(4)))
    large = frozenset(n.name for n in probe.nodes if n.no_grad and n.output_bytes == 2 << 20)
    assert len(large) == 2  # the mask and the integers, surely without a gradient
    packed, loose, metas, loose_metas, inputs = _split_before_relu(model, large if marked else frozenset())
    assert len(loose_metas[0].outputs) == 4  # h, mask, many and x
    kinds = sorted(((t.dtype, t.requires_grad, t.numel()) for t in metas[0].outputs), key=str)
    if marked:  # h with x (an input: no gradient, zeros back); the mask and the integers as bytes
        assert kinds == [(torch.float32, True, 48), (torch.uint8, False, 2 * (1 << 21))]
    else:  # one message: their zeros come back
        assert kinds == [(torch.float32, True, 48 + (1 << 21) // 4 + (1 << 21) // 4)]
    _same_gradients(model, packed, loose, inputs)


def test_the_unets_skips_cross_a_cut_as_one_message() -> None:
    spec, graph, plan = Case("unet", 2).build()
    prepared = prepare(spec, plan, 2, graph)
    assert len(prepared.split.stages[1].inputs) >= 3 and len(prepared.metas[0].outputs) == 1
    loose = prepare(spec, plan, 2, graph, pack=False)
    assert len(loose.metas[0].outputs) == len(prepared.split.stages[1].inputs)
    assert messages_per_cut(prepared.metas) == [(1, 1)]
    assert messages_per_cut(loose.metas) == [(len(loose.metas[0].outputs),) * 2]
    assert prepared.metas[0].outputs[0].numel() == sum(t.numel() for t in loose.metas[0].outputs)


@pytest.mark.parametrize("example", ["gpt2", "llama"])
def test_a_transformers_hidden_states_and_mask_cross_as_one_message(example: str) -> None:
    spec, graph, plan = Case(example, 2).build()
    loose = prepare(spec, plan, 2, graph, pack=False)
    assert {t.dtype for t in loose.metas[0].outputs} >= {torch.bool, torch.float32}
    prepared = prepare(spec, plan, 2, graph)
    (message,) = prepared.metas[0].outputs
    assert (message.dtype, message.requires_grad) == (torch.float32, True)
    assert message.numel() * 4 >= sum(t.numel() * t.element_size() for t in loose.metas[0].outputs)


@pytest.mark.distributed
@pytest.mark.parametrize("mixed", [[], ["--mixed"], ["--bf16"]], ids=["floats", "mixed", "bf16"])
def test_the_benchmark_prints_each_way(mixed: list[str]) -> None:
    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_cut_messages", "--tensors", "3",
                          "--floats", "64", "--steps", "5", *mixed], capture_output=True, text=True, timeout=300,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [ln for ln in out.stdout.splitlines() if " KiB " in ln]
    assert [r.split("KiB")[1].split("  ")[1].strip() for r in rows] == ["one tensor", "packed", "one by one"]
    assert all(float(r.split()[-1]) > 0 and float(r.split()[-2]) > 0 for r in rows)  # / one tensor, pred/med
    assert len({r.split(" ms")[0].split()[-1] for r in rows[1:]}) == 1  # packed, one by one: one plan, one prediction


@pytest.mark.parametrize("kinds", [False, True, "bf16"], ids=["floats", "mixed", "bf16"])
def test_a_cut_of_two_dtypes_with_a_gradient_sends_one_message_each_way(kinds: bool | str) -> None:
    """bench_cut_messages' cut, its sends as a planner records them: floats with a gradient
    (one message each way), with a bool, an int64 and a float without one (still one: they
    join the first), with bfloat16 ones (still one: they travel as their bytes, gradients
    too), as the plan prices it ([Note: what a cut sends])."""
    from benchmarks.bench_cut_messages import _setup

    spec, graph, plan = _setup(4, 64, kinds)
    prepared = prepare(spec, plan, 2, graph)
    assert messages_per_cut(prepared.metas) == [(1, 1)]
    (cut,) = traffic(plan)
    assert (cut.forward_messages, cut.back_messages) == (1, 1)


FORWARD_ONLY = [c for c in CASES.values() if c.links is not None]


@pytest.mark.parametrize("case", [*FORWARD_ONLY, CASES["unet-4-1f1b"], CASES["gpt2-2-1f1b"], CASES["bert-2-zbv"]],
                         ids=lambda c: c.name)
def test_each_cut_sends_the_messages_its_plan_prices(case: Case) -> None:
    """The plan's traffic ([Note: what a cut sends]) is what the prepared stages send: per
    cut, one message forward, two where a value the plan marks goes forward only, and one
    back; the bytes back are those of the messages with a gradient."""
    spec, graph, plan = case.build()
    prepared = prepare(spec, plan, case.world_size, graph)
    cuts = traffic(plan)
    assert messages_per_cut(prepared.metas) == [(t.forward_messages, t.back_messages) for t in cuts]
    for b, (meta, cut) in enumerate(zip(prepared.metas, cuts)):
        sent = [t.numel() * t.element_size() for t in meta.outputs]
        back = [n for n, t in zip(sent, meta.outputs) if t.requires_grad]
        # a message pads each value of another dtype than its own to 16 bytes
        pad = 16 * sum(1 for st in plan.stages for x in st.sends if st.index <= b < x.to_stage)
        assert cut.forward_bytes <= sum(sent) <= cut.forward_bytes + pad
        assert cut.back_bytes <= sum(back) <= cut.back_bytes + pad
    alone = [any(x.forward_only for st in plan.stages for x in st.sends if st.index <= b < x.to_stage)
             for b in range(len(cuts))]
    # where a value goes forward only, its message is one more forward and none back
    assert all(t.forward_messages == t.back_messages + 1 for t, a in zip(cuts, alone) if a)
    if case.example == "llama" and case.links is not None:  # a cut among its layers sends the mask so
        assert any(alone)
