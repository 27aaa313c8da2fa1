"""Tests for autopipe/runtime/grad_accum.py: weight gradients added in place equal autograd's, bit for bit."""

from __future__ import annotations

import copy
import sys

import pytest
import torch

import autopipe
from autopipe.runtime.grad_accum import (
    forget_rows,
    fuse_weight_grads,
    fused_embedding,
    fused_linear,
    mean_grad_,
)

from .conftest import example_spec, resident_bytes_at
from .runtime_cases import TINY


@pytest.mark.parametrize(("vocab", "width", "tokens", "padding_idx"),
                         [(4096, 64, 64, 0), (300, 16, 400, -1), (20, 8, 500, 3)])
def test_embedding_gradient_equals_autograd(vocab: int, width: int, tokens: int, padding_idx: int) -> None:
    """Three micro-batches with repeated tokens (and the padding row) accumulate the same bits."""
    gen = torch.Generator().manual_seed(0)
    ref = torch.nn.Parameter(torch.randn(vocab, width, generator=gen))
    fused = torch.nn.Parameter(ref.detach().clone())
    for _ in range(3):
        ids = torch.randint(0, min(vocab, 50), (2, tokens), generator=gen)
        grad = torch.randn(2, tokens, width, generator=gen)
        out = fused_embedding(fused, ids, padding_idx)
        torch.ops.aten.embedding.default(ref, ids, padding_idx).backward(grad)
        out.backward(grad)
        assert torch.equal(out, torch.ops.aten.embedding.default(ref.detach(), ids, padding_idx))
        assert ref.grad is not None and fused.grad is not None
        assert torch.equal(fused.grad, ref.grad)
    if padding_idx >= 0:
        assert not fused.grad[padding_idx].any()


@pytest.mark.parametrize(("rows", "cols", "shape", "bias"),
                         [(4096, 256, (1, 64), False), (256, 704, (2, 16), True), (17, 33, (5,), True)])
def test_linear_gradients_equal_autograd(rows: int, cols: int, shape: tuple[int, ...], bias: bool) -> None:
    """Output, input, weight and bias gradients over three short micro-batches: the same bits."""
    gen = torch.Generator().manual_seed(1)
    w_ref = torch.nn.Parameter(torch.randn(rows, cols, generator=gen))
    w = torch.nn.Parameter(w_ref.detach().clone())
    b_ref = torch.nn.Parameter(torch.randn(rows, generator=gen)) if bias else None
    b = torch.nn.Parameter(b_ref.detach().clone()) if b_ref is not None else None
    for _ in range(3):
        x_ref = torch.randn(*shape, cols, generator=gen, requires_grad=True)
        x = x_ref.detach().clone().requires_grad_()
        grad = torch.randn(*shape, rows, generator=gen)
        y_ref = torch.ops.aten.linear.default(x_ref, w_ref, b_ref)
        y = fused_linear(x, w, b)
        y_ref.backward(grad)
        y.backward(grad)
        assert torch.equal(y, y_ref) and torch.equal(x.grad, x_ref.grad)
        assert torch.equal(w.grad, w_ref.grad)
        if b is not None and b_ref is not None:
            assert torch.equal(b.grad, b_ref.grad)


@pytest.mark.parametrize(("rows", "cols", "tokens"), [(512, 512, 1024), (8192, 9, 8), (3, 8, 32)])
def test_linear_weight_gradient_equals_autograd_to_rounding(rows: int, cols: int, tokens: int) -> None:
    """Long micro-batches and narrow weights: the GEMM adds ``.grad`` into a partial sum, so the
    weight's gradient equals autograd's to rounding from the second micro-batch on ([Note:
    weight gradients accumulated in place]); the first is exact."""
    gen = torch.Generator().manual_seed(2)
    w_ref = torch.nn.Parameter(torch.randn(rows, cols, generator=gen))
    w = torch.nn.Parameter(w_ref.detach().clone())
    for i in range(3):
        x = torch.randn(tokens, cols, generator=gen)
        grad = torch.randn(tokens, rows, generator=gen)
        torch.ops.aten.linear.default(x, w_ref, None).backward(grad)
        fused_linear(x, w, None).backward(grad)
        if i == 0:
            assert torch.equal(w.grad, w_ref.grad)
        # rounding of sums of up to 3 × 1,024 products: within a few units in the last place of
        # the largest element, wherever a sum cancels
        torch.testing.assert_close(w.grad, w_ref.grad, rtol=1e-5, atol=1e-6 * float(w_ref.grad.abs().max()))


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_fused_model_gradients_equal_autograd(name: str) -> None:
    """A traced model with its weights fused: every gradient after two micro-batches is autograd's.
    GPT-2's token embedding, read again by its tied head, keeps autograd's path (its position
    embedding is fused; its projections are ``Conv1D``s, ``addmm``, which keep theirs too)."""
    spec = example_spec(name, **TINY[name])
    graph = autopipe.trace(spec.model, spec.example_inputs, spec.example_kwargs)
    ref = graph.gm
    gm = copy.deepcopy(ref)
    fused = fuse_weight_grads([gm], torch.device("cpu"), splits_backward=False)
    if name == "llama":
        assert {"model.embed_tokens.weight", "lm_head.weight", "model.layers.0.mlp.up_proj.weight"} <= set(fused)
    else:
        assert fused == ["transformer.wpe.weight"]
    for module in (ref, gm):
        for i in range(2):
            (inputs,), target = spec.batch(1, i)
            out = module(*graph.flat_inputs((inputs,)))
            spec.loss_fn(graph.unflatten_output(out), target).backward()
    for (pname, p), q in zip(ref.named_parameters(), gm.parameters()):
        assert (p.grad is None) == (q.grad is None), pname
        if p.grad is not None:
            assert torch.equal(p.grad, q.grad), pname


class _Leaves(torch.nn.Module):
    """Leaf modules as ``torch.fx.symbolic_trace`` keeps them: an embedding with a padding row,
    a linear with and one without a bias, a linear written in place after it, and an
    embedding that renormalises its rows (``max_norm``), which keeps autograd's path."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(64, 16, padding_idx=1)
        self.renorm = torch.nn.Embedding(64, 16, max_norm=1.0)
        self.up = torch.nn.Linear(16, 32)
        self.act = torch.nn.ReLU(inplace=True)
        self.down = torch.nn.Linear(32, 16, bias=False)
        self.out = torch.nn.Linear(16, 8)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids) + self.renorm(ids)
        return self.out(self.down(self.act(self.up(h))))


def test_fx_leaf_modules_are_fused_and_equal_autograd() -> None:
    """``nn.Linear`` and ``nn.Embedding`` called as leaf modules (fx traces: the tied LM, the
    MLP) are fused too, on their weights, but for a linear whose output is written in place
    and an embedding with ``max_norm``; every gradient after two micro-batches is autograd's."""
    torch.manual_seed(0)
    model = _Leaves()
    ids = torch.randint(0, 64, (2, 8))
    graph = autopipe.trace(model, (ids,), frontend="fx")
    ref = graph.gm
    gm = copy.deepcopy(ref)
    fused = fuse_weight_grads([gm], torch.device("cpu"), splits_backward=False)
    assert sorted(fused) == ["down.weight", "embed.weight", "out.weight"]
    assert not [n for n in gm.graph.nodes if n.op == "call_module" and n.target in ("embed", "down", "out")]
    for module in (ref, gm):
        for i in range(2):
            graph.unflatten_output(module(*graph.flat_inputs(((ids + i) % 64,)))).square().sum().backward()
    for (pname, p), q in zip(ref.named_parameters(), gm.parameters()):
        assert p.grad is not None and q.grad is not None and torch.equal(p.grad, q.grad), pname


def test_a_tied_leaf_read_twice_on_one_rank_is_not_fused() -> None:
    """The tied LM whole: its embedding and its head read one weight, so neither is fused; split
    in two, each stage reads it once and both are."""
    from autopipe.runtime.split import split_graph

    spec = example_spec("tied_lm", vocab_size=512, width=16, layers=2, heads=2, seq_len=8, batch_size=1)
    graph = autopipe.trace(spec.model, spec.example_inputs)
    assert fuse_weight_grads([copy.deepcopy(graph.gm)], torch.device("cpu"), splits_backward=False) == []
    plan = autopipe.plan(spec.model, spec.example_inputs, num_stages=2, profile="estimate", method="uniform")
    stages = [copy.deepcopy(s.module) for s in split_graph(graph, plan, {}).stages]
    tied = {n for group in graph.tied for n in group}
    assert [fuse_weight_grads([m], torch.device("cpu"), splits_backward=False, whole=tied)
            for m in stages] == [["embed.weight"], ["head.weight"]]


def test_a_linear_written_in_place_keeps_autograd_path() -> None:
    """A linear whose output is then written in place (Swin V2's position-bias MLP: ``Linear``,
    ``ReLU(inplace=True)``, found by the model zoo sweep) is not fused: autograd refuses to
    write a view made inside a custom Function. The linear after it still is."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(inplace=True), torch.nn.Linear(32, 16))
    x = torch.randn(2, 5, 16)
    graph = autopipe.trace(model, (x,), frontend="export")
    ref = graph.gm
    gm = copy.deepcopy(ref)
    assert fuse_weight_grads([gm], torch.device("cpu"), splits_backward=False) == ["2.weight"]
    for module in (ref, gm):
        for i in range(2):
            graph.unflatten_output(module(*graph.flat_inputs((x + i,)))).square().sum().backward()
    for (pname, p), q in zip(ref.named_parameters(), gm.parameters()):
        assert p.grad is not None and q.grad is not None and torch.equal(p.grad, q.grad), pname


class _ZeroPadded(torch.nn.Module):
    """Hubert's feature projection: a linear, a dropout of p = 0 (which returns its input
    itself; ``type_as`` to the same type does too), then the padded frames zeroed in place
    through its output."""

    def __init__(self, as_is: str) -> None:
        super().__init__()
        self.as_is = as_is
        self.proj = torch.nn.Linear(16, 32)
        self.drop = torch.nn.Dropout(0.0)
        self.out = torch.nn.Linear(32, 16)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.drop(self.proj(x)) if self.as_is == "dropout" else self.proj(x).type_as(x)
        h.masked_fill_(~mask.unsqueeze(-1), 0.0)  # Hubert writes h[~mask] = 0, which fx cannot trace
        return self.out(h)  # type: ignore[no-any-return]


@pytest.mark.parametrize("as_is", ["dropout", "type_as"])
@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_a_linear_written_in_place_through_an_op_returning_its_input_keeps_autograd_path(frontend: str, as_is: str) -> None:
    """A dropout of p = 0 hands on its input itself, so a write after it writes the linear
    before it (HubertForCTC with an attention mask stopped ``autopipe plan`` and ``train``:
    "Output 0 of _LinearGrad is a view and is being modified inplace"); that linear is
    not fused ([Note: ops that return their input as is] in ``autopipe/trace/aliasing.py``)."""
    torch.manual_seed(0)
    model = _ZeroPadded(as_is)
    x, mask = torch.randn(2, 5, 16), torch.rand(2, 5) > 0.3
    graph = autopipe.trace(model, (x, mask), frontend=frontend)
    ref = graph.gm
    gm = copy.deepcopy(ref)
    fused = fuse_weight_grads([gm], torch.device("cpu"), splits_backward=False)
    assert fused == ["out.weight"]
    for module in (ref, gm):
        for i in range(2):
            graph.unflatten_output(module(*graph.flat_inputs((x + i, mask)))).square().sum().backward()
    for (pname, p), q in zip(ref.named_parameters(), gm.parameters()):
        assert p.grad is not None and q.grad is not None and torch.equal(p.grad, q.grad), pname


def test_nothing_fused_off_cpu_or_with_split_backward() -> None:
    spec = example_spec("llama", **TINY["llama"])
    graph = autopipe.trace(spec.model, spec.example_inputs, spec.example_kwargs)
    assert fuse_weight_grads([graph.gm], torch.device("cpu"), splits_backward=True) == []
    assert fuse_weight_grads([graph.gm], torch.device("meta"), splits_backward=False) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_embedding_gradient_on_zero_pages_is_resident_where_written() -> None:
    """A 64 MiB embedding's gradient over two micro-batches of 64 tokens: its mapping is
    resident only where rows were written, also after it is read whole (as the optimizer
    does); its mean (``mean_grad_``) equals autograd's gradient divided by 2, bit for bit."""
    gen = torch.Generator().manual_seed(2)
    ref = torch.nn.Parameter(torch.randn(16384, 1024, generator=gen))
    fused = torch.nn.Parameter(ref.detach().clone())
    for _ in range(2):
        ids = torch.randint(0, 16384, (1, 64), generator=gen)
        grad = torch.randn(1, 64, 1024, generator=gen)
        fused_embedding(fused, ids).backward(grad)
        torch.ops.aten.embedding.default(ref, ids).backward(grad)
    assert fused.grad is not None and ref.grad is not None
    mean_grad_(fused.grad, 2)
    ref.grad.div_(2)
    assert float(fused.grad.abs().sum()) > 0  # read whole: maps the zero page, not new memory
    size, resident = resident_bytes_at(fused.grad.data_ptr())
    assert size >= fused.grad.numel() * 4 == 64 << 20
    assert resident <= 128 * 4096, f"{resident / 2**20:.1f} MiB resident for 128 rows of 4 KiB"
    assert torch.equal(fused.grad, ref.grad)


def test_mean_grad_divides_whole_after_forget_rows() -> None:
    """Rows written outside the fused backward (here: every element) are divided once zeroing
    forgot which rows the fused backward wrote."""
    w = torch.nn.Parameter(torch.zeros(512, 1024))
    fused_embedding(w, torch.tensor([[3, 5]])).backward(torch.ones(1, 2, 1024))
    assert w.grad is not None
    forget_rows(w.grad)
    w.grad.fill_(4.0)
    mean_grad_(w.grad, 2)
    assert torch.equal(w.grad, torch.full((512, 1024), 2.0))


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_mean_grad_of_an_embedding_read_by_any_index_dtype(dtype: torch.dtype) -> None:
    """An embedding read by int32 indices (TimesFM's frequency embedding) records its rows as
    int64, as ``index_copy_`` and the tied sum need: the mean over two micro-batches equals
    autograd's gradient divided by 2, and ``rows_only`` names the rows read."""
    from autopipe.runtime.grad_accum import rows_only
    gen = torch.Generator().manual_seed(3)
    for vocab in (4, 512):  # ordinary zeros, and zero pages (1 MiB and more)
        ref = torch.nn.Parameter(torch.randn(vocab, 1024, generator=gen))
        fused = torch.nn.Parameter(ref.detach().clone())
        for _ in range(2):
            ids = torch.randint(0, 3, (2, 5), generator=gen).to(dtype)
            grad = torch.randn(2, 5, 1024, generator=gen)
            fused_embedding(fused, ids).backward(grad)
            torch.ops.aten.embedding.default(ref, ids).backward(grad)
        assert fused.grad is not None and ref.grad is not None
        mean_grad_(fused.grad, 2)
        assert torch.equal(fused.grad, ref.grad / 2)
        rows = rows_only(fused.grad)
        assert rows is not None and rows.dtype == torch.int64
        assert set(rows.tolist()) <= {0, 1, 2} and ref.grad[rows].abs().sum() == ref.grad.abs().sum()


def test_a_tied_embedding_gradient_is_not_on_zero_pages() -> None:
    """GPT-2 (its head tied to the word embedding) split in two: the embedding's gradient is
    summed with the head's copy after the backwards (written whole), so it is made as
    ordinary zeros; untied, on zero pages."""
    from autopipe.runtime.grad_accum import fused_embedding_whole
    from autopipe.runtime.split import split_graph

    spec = example_spec("gpt2", **TINY["gpt2"])
    graph = autopipe.trace(spec.model, spec.example_inputs)
    plan = autopipe.plan(spec.model, spec.example_inputs, num_stages=2, profile="estimate", method="uniform")
    tied = {n for group in graph.tied for n in group}
    assert tied, "GPT-2 has a tied group"

    def embedding_targets(whole: set[str] | None) -> list[object]:
        stage0 = copy.deepcopy(split_graph(graph, plan, {}).stages[0].module)
        assert fuse_weight_grads([stage0], torch.device("cpu"), splits_backward=False, whole=whole)
        return [n.target for n in stage0.graph.nodes if getattr(n.target, "__name__", "").startswith("fused_emb")]

    # the word embedding tied, the position embedding not
    assert sorted(map(str, embedding_targets(tied))) == sorted(map(str, [fused_embedding, fused_embedding_whole]))
    assert embedding_targets(None) == [fused_embedding_whole] * 2  # replicas: every gradient whole
    assert embedding_targets(set()) == [fused_embedding] * 2
