"""Weight gradients added into ``.grad`` in place, without a gradient-sized temporary (CPU ranks).

[Note: weight gradients accumulated in place]

With several micro-batches, autograd makes each weight's gradient as a new tensor in
every micro-batch's backward and then adds it to ``.grad``: for a moment a rank holds
the whole gradient twice over. For most weights that moment is small, but a
vocabulary matrix is the largest tensor of a language model: Llama's 32,000 × 1,024
embedding (stage 0) and head (last stage) are 131 MB each, and in
``benchmarks/bench_init_memory.py`` that temporary was a third of what a rank held
beyond its parameters, gradients and Adam moments. So a stage's embeddings and linear
layers run through ``fused_embedding`` and ``fused_linear`` instead (what Megatron-LM
calls gradient-accumulation fusion)::

    before   weight ─► AccumulateGrad: .grad += (new V × H tensor)
    after    embedding: .grad.index_add_(0, rows, g[rows])   (only the rows the batch read)
             linear:    .grad.addmm_(g.T, x)                 (one GEMM into .grad)

The embedding's gives ``.grad`` bit for bit the values autograd gives it: its backward
sums each row's gradients in token order into zeros and then adds that row to ``.grad``
(``embedding_dense_backward``), which is what ``index_add_`` does with the rows the batch
read (every other row gains +0). The linear's equals autograd's to rounding, as any
parity check of training compares (``assert_close``), and bit for bit only where the CPU
BLAS sums the whole product before it adds ``.grad`` in (``beta=1``). Measured with the
MKL torch ships, one thread: the same bits for micro-batches of up to 128 rows (tokens)
and weights at least 12 wide and 4 tall; from 256 rows on, and for narrower weights
(3 × 8, 8,192 × 9) from the second micro-batch on, the GEMM adds ``.grad`` into a
partial sum and rounds differently (``tests/test_runtime_grad_accum.py`` checks both
cases). The first micro-batch's gradient is always exact (added into zeros). The input's
gradient still comes from autograd's own formula: the weight enters the op detached, and
only its gradient takes the new path.

Leaf modules count as their functions: ``torch.fx.symbolic_trace`` keeps ``nn.Linear``
and ``nn.Embedding`` as calls of the module (the tied LM, the MLP), and ``fuse_weight_grads``
replaces such a call by the fused function on the module's weights (only these exact
classes; an embedding with ``max_norm`` renormalises its weight in place and keeps its
module). On the tied LM (2 stages, its 32,768 × 128 head tied to the embedding) that took
the median step from 184.0 to 179.2 ms (three pairs of 30-step runs taken in turns,
2026-12-04): the last stage's head no longer makes and adds a 16 MiB weight gradient in
each micro-batch's backward, nor the first stage's embedding.

Only where that holds: CPU stages, fp32 weights (a 16-bit GEMM rounds its sum once
inside but twice outside), a weight read by exactly one node of the rank's stages
(autograd sums a weight's gradients from several uses before it adds them to ``.grad``;
adding each one in turn would round differently), a linear whose output nothing writes in
place (``fused_linear`` returns a view made inside a custom Function, which autograd refuses
to let anything write: Swin V2's ``Linear`` then ``ReLU(inplace=True)``), and schedules
whose backward is one pass (zero-bubble ones take weight gradients from
``torch.autograd.grad``, which needs the weight in the graph).

[Note: an embedding's gradient on zero pages]

An embedding's gradient is zero but for the rows the step's batch read: 128 of Llama's
32,000 rows in ``benchmarks/bench_init_memory.py``. Made with ``zeros_like`` it is
131 MB of pages written with zeros; made on an anonymous private mapping instead
(``zero_pages_like``), the kernel gives it a page only where a row is written, and
reading the rest (the optimizer does) maps its one shared zero page, which is not
resident memory of the process. Read page by page, each 4 KiB page's first read is a
fault: a 4 MiB gradient took 0.51 ms to sum on fresh zero pages against 0.14 ms dense
(this VM, one thread), a cost the optimizer step paid every step. So the mapping is
populated readable when it is made (``MADV_POPULATE_READ``: every page mapped to the
zero page in one call, 0.12 ms for those 4 MiB; the sum then took 0.03 ms).

A gradient that ``_EmbeddingGrad`` makes itself (the first micro-batch's, on a CPU rank, when ``.grad`` was None) lives on zero pages and
records the rows it wrote; ``mean_grad_`` then divides those rows only (every other
element is +0, and +0 / m is +0: the same bits as dividing all), and marks the gradient
as zero but for them (``rows_only``, until anything writes it), which a tied weight's sum
uses ([Note: a tied embedding's rows] in ``autopipe.runtime.sum_over``). Whatever writes the
whole gradient later (clipping, ``zero_()``) makes its pages resident, as a
``zeros_like`` gradient's were; nothing else changes. A gradient the runtime itself writes
whole after the backwards (a tied weight's, summed with its copies; every one under
data-parallel replicas) is made as ordinary zeros (``fused_embedding_whole``): on fresh
zero pages it would fault in every 4 KiB page each step, where pinned malloc hands back
the same block ([Note: pinned malloc on CPU ranks]). Huge pages
are refused for the mapping (``MADV_NOHUGEPAGE``), or one written row could take 2 MiB.
Plans for CPU devices charge such a gradient as the rows a step can write
(``autopipe.profile.memory.embedding_grad_bytes``), as ``autopipe train`` runs it
(``zero_grad(set_to_none=True)``, no clipping: a loop of one's own that clips or zeroes
in place makes the gradient whole, beyond what the plan charged), and do not recompute that embedding (inside a
recomputed region ``fuse_weight_grads`` does not see it); with data-parallel replicas or
a split backward they charge it whole. In ``benchmarks/bench_init_memory.py`` (a 125 MiB
gradient, 128 rows of 4 KiB written) rank 0's peak fell by 127 MiB with the same plan,
2,389 → 2,262 MiB.
"""

from __future__ import annotations

import contextlib
import mmap
from collections import Counter
from collections.abc import Collection, Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from autopipe._malloc import ZERO_PAGES_MIN
from autopipe.trace.aliasing import written_in_place

_EMBEDDING = torch.ops.aten.embedding.default
_LINEAR = torch.ops.aten.linear.default
_ROWS = "_autopipe_rows_written"
"""Attribute of a gradient on zero pages: the row indices written into it, one tensor per
backward ([Note: an embedding's gradient on zero pages])."""
_SPARSE = "_autopipe_rows_only"
"""Attribute of a gradient that is zero but for some rows: (those rows, the tensor's
``_version`` then), set by ``mean_grad_`` ([Note: a tied embedding's rows] in
``autopipe.runtime.sum_over``)."""
_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)
"""Map every page of a range to the zero page now, in one call (Linux 5.14)."""


def zero_pages_like(t: torch.Tensor) -> torch.Tensor:
    """Zeros shaped as ``t`` (contiguous, on the CPU) on pages the kernel supplies on first write.

    ([Note: an embedding's gradient on zero pages].) The mapping lives as long as the tensor.
    """
    nbytes = t.numel() * t.element_size()
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        buf.madvise(mmap.MADV_NOHUGEPAGE)
    with contextlib.suppress(OSError):  # kernels before 5.14 refuse it: pages then fault one by one
        buf.madvise(_MADV_POPULATE_READ)
    return torch.frombuffer(buf, dtype=t.dtype, count=t.numel()).view(t.shape)


def mean_grad_(grad: torch.Tensor, microbatches: int) -> None:
    """Divide ``grad`` by ``microbatches`` in place, as ``grad.div_(microbatches)`` does.

    A gradient on zero pages has only the rows written since it was made divided (the
    others are zeros; [Note: an embedding's gradient on zero pages]); it is then an ordinary
    gradient, divided whole the next time.
    """
    rows: list[torch.Tensor] | None = grad.__dict__.pop(_ROWS, None)
    if rows is None:
        grad.div_(microbatches)
        return
    written = torch.unique(torch.cat(rows)) if rows else torch.zeros(0, dtype=torch.int64)
    if rows:
        grad.index_copy_(0, written, grad.index_select(0, written).div_(microbatches))
    setattr(grad, _SPARSE, (written, grad._version))


def rows_only(grad: torch.Tensor) -> torch.Tensor | None:
    """The rows (sorted int64 indices into dim 0) outside which ``grad`` is zero, where
    ``mean_grad_`` left it so and nothing has written it since; else None."""
    record: tuple[torch.Tensor, int] | None = grad.__dict__.get(_SPARSE)
    if record is None or record[1] != grad._version:
        return None
    return record[0]


def forget_rows(grad: torch.Tensor) -> None:
    """Treat ``grad`` as written everywhere from now on (``mean_grad_`` divides all of it)."""
    grad.__dict__.pop(_ROWS, None)
    grad.__dict__.pop(_SPARSE, None)


class _EmbeddingGrad(torch.autograd.Function):
    """The embedding's output; its weight's gradient added into ``.grad`` row by row."""

    @staticmethod
    def forward(ctx: Any, weight: nn.Parameter, indices: torch.Tensor, padding_idx: int,
                zero_pages: bool) -> torch.Tensor:
        ctx.weight = weight
        ctx.padding_idx = padding_idx
        ctx.zero_pages = zero_pages
        ctx.save_for_backward(indices)
        out: torch.Tensor = _EMBEDDING(weight.detach(), indices, padding_idx)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, None, None, None]:
        (indices,) = ctx.saved_tensors
        weight: nn.Parameter = ctx.weight
        rows = indices.reshape(-1)
        g = grad.reshape(rows.numel(), -1)
        if ctx.padding_idx >= 0:  # the padding row gets no gradient, as in embedding_dense_backward
            keep = rows != ctx.padding_idx
            rows, g = rows[keep], g[keep]
        # each row's gradients summed in token order into zeros, then added to .grad once
        unique, inverse = torch.unique(rows, return_inverse=True)
        summed = torch.zeros((unique.numel(), g.shape[1]), dtype=g.dtype, device=g.device)
        summed.index_add_(0, inverse, g)
        if weight.grad is None:
            weight.grad = _new_embedding_grad(weight, ctx.zero_pages)
        weight.grad.index_add_(0, unique, summed)
        written = weight.grad.__dict__.get(_ROWS)
        if written is not None:  # int64 whatever the indices were (TimesFM reads int32 ones)
            written.append(unique.long())
        return None, None, None, None


def _new_embedding_grad(weight: nn.Parameter, zero_pages: bool) -> torch.Tensor:
    """A zero gradient for ``weight``: on zero pages where asked and that saves memory,
    recording its rows."""
    if (not zero_pages or weight.device.type != "cpu" or not weight.is_contiguous()
            or weight.numel() * weight.element_size() < ZERO_PAGES_MIN):
        grad = torch.zeros_like(weight)
    else:
        grad = zero_pages_like(weight)
    setattr(grad, _ROWS, [])
    return grad


class _LinearGrad(torch.autograd.Function):
    """The identity on the linear's output; its weight's gradient added into ``.grad`` by one GEMM."""

    @staticmethod
    def forward(ctx: Any, out: torch.Tensor, x: torch.Tensor, weight: nn.Parameter) -> torch.Tensor:
        ctx.weight = weight
        ctx.save_for_backward(x)
        return out.view_as(out)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (x,) = ctx.saved_tensors
        weight: nn.Parameter = ctx.weight
        g = grad.reshape(-1, grad.shape[-1])
        if weight.grad is None:
            weight.grad = torch.zeros_like(weight)
        weight.grad.addmm_(g.t(), x.reshape(-1, x.shape[-1]))
        return grad, None, None


def fused_embedding(weight: nn.Parameter, indices: torch.Tensor, padding_idx: int = -1) -> torch.Tensor:
    """``aten.embedding`` whose weight gradient is added into ``weight.grad`` in place, made
    on zero pages ([Note: an embedding's gradient on zero pages])."""
    return _fused_embedding(weight, indices, padding_idx, zero_pages=True)


def fused_embedding_whole(weight: nn.Parameter, indices: torch.Tensor, padding_idx: int = -1) -> torch.Tensor:
    """``fused_embedding`` for a weight whose gradient is written whole after the backwards
    (summed with a tied copy's or over replicas): ordinary zeros, which pinned malloc reuses
    step after step, where zero pages would take a page fault on every 4 KiB each step."""
    return _fused_embedding(weight, indices, padding_idx, zero_pages=False)


def _fused_embedding(weight: nn.Parameter, indices: torch.Tensor, padding_idx: int, *,
                     zero_pages: bool) -> torch.Tensor:
    if not (weight.requires_grad and torch.is_grad_enabled()):
        return _EMBEDDING(weight, indices, padding_idx)  # type: ignore[no-any-return]
    out: torch.Tensor = _EmbeddingGrad.apply(weight, indices, padding_idx, zero_pages)  # type: ignore[no-untyped-call]
    return out


def fused_linear(x: torch.Tensor, weight: nn.Parameter, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``aten.linear`` whose weight gradient is added into ``weight.grad`` in place; the input's
    and the bias's gradients are autograd's."""
    if not (weight.requires_grad and torch.is_grad_enabled()):
        return _LINEAR(x, weight, bias)  # type: ignore[no-any-return]
    out = _LINEAR(x, weight.detach(), bias)
    fused: torch.Tensor = _LinearGrad.apply(out, x, weight)  # type: ignore[no-untyped-call]
    return fused


def fuse_weight_grads(modules: Sequence[fx.GraphModule], device: torch.device, *,
                      splits_backward: bool, whole: Collection[str] | None = ()) -> list[str]:
    """Route the embeddings and linear layers of one rank's stage modules through
    ``fused_embedding`` and ``fused_linear`` where that is exact ([Note: weight gradients
    accumulated in place]), in place.

    Args:
        modules: every stage module the rank runs (a weight read in two of them is left alone).
        device: where the rank computes (only CPU stages are changed).
        splits_backward: the schedule takes weight gradients in a pass of their own.
        whole: names (``get_attr`` targets) of the weights whose gradients are written whole
            after the backwards (tied to another stage's copy), None for all of them
            (averaged over replicas): their embeddings' gradients are not made on zero pages.

    Returns:
        The names of the weights whose gradients are now accumulated in place.
    """
    if device.type != "cpu" or splits_backward:
        return []
    uses: Counter[int] = Counter()
    for gm in modules:
        for node in gm.graph.nodes:
            if node.op == "get_attr":
                uses[id(_attr(gm, node.target))] += len(node.users)
            elif node.op == "call_module":
                for p in gm.get_submodule(str(node.target)).parameters():
                    uses[id(p)] += 1
    fused = []
    for gm in modules:
        changed = False
        # a fused linear's output is a view made inside a custom Function, which autograd
        # forbids writing in place (Swin V2's position-bias MLP: Linear, then ReLU(inplace=True))
        linears = [n.name for n in gm.graph.nodes if _is_linear(gm, n)]
        written = written_in_place(gm, list(gm.graph.nodes), linears)
        for node in list(gm.graph.nodes):
            name = None if node.name in written else _fusable(gm, node, uses)
            if name is None:
                continue
            embedding = node.target is _EMBEDDING or _leaf(gm, node) is nn.Embedding
            zero_pages = whole is not None and name not in whole
            target = (fused_embedding if zero_pages else fused_embedding_whole) if embedding else fused_linear
            if node.op == "call_module":
                _inline_leaf(gm, node, target)
            else:
                node.target = target
            fused.append(name)
            changed = True
        if changed:
            gm.recompile()
    return fused


def _leaf(gm: fx.GraphModule, node: fx.Node) -> type[nn.Module] | None:
    """``nn.Linear`` or ``nn.Embedding`` where ``node`` calls one as a leaf module (as
    ``torch.fx.symbolic_trace`` leaves them) with its one input; None otherwise. Only these
    exact classes: a subclass may run another forward."""
    if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
        return None
    kind = type(gm.get_submodule(str(node.target)))
    return kind if kind in (nn.Linear, nn.Embedding) else None


def _is_linear(gm: fx.GraphModule, node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target is _LINEAR) or _leaf(gm, node) is nn.Linear


def _inline_leaf(gm: fx.GraphModule, node: fx.Node, target: Any) -> None:
    """Replace a leaf ``nn.Linear`` / ``nn.Embedding`` call by ``target`` on its weights,
    as the module's forward calls ``F.linear`` / ``F.embedding``."""
    module = gm.get_submodule(str(node.target))
    graph = gm.graph
    with graph.inserting_before(node):
        weight = graph.get_attr(f"{node.target}.weight")
        if isinstance(module, nn.Embedding):
            padding = -1 if module.padding_idx is None else int(module.padding_idx)
            new = graph.call_function(target, (weight, node.args[0], padding))
        else:
            bias = graph.get_attr(f"{node.target}.bias") if module.bias is not None else None
            new = graph.call_function(target, (node.args[0], weight, bias))
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    graph.erase_node(node)


def _fusable(gm: fx.GraphModule, node: fx.Node, uses: Counter[int]) -> str | None:
    """The weight's name if ``node`` is an embedding or linear whose weight may be fused."""
    leaf = _leaf(gm, node)
    if leaf is not None:
        module = gm.get_submodule(str(node.target))
        # max_norm renormalises the weight in place; scale_grad_by_freq and sparse keep autograd's path
        if leaf is nn.Embedding and (module.max_norm is not None or module.scale_grad_by_freq
                                     or module.sparse):
            return None
        return _weight_name(module.weight, f"{node.target}.weight", uses)
    if node.op != "call_function" or node.target not in (_EMBEDDING, _LINEAR) or node.kwargs:
        return None
    if node.target is _EMBEDDING:
        weight = node.args[0]
        # scale_grad_by_freq and sparse gradients keep autograd's path
        if len(node.args) > 3 and any(bool(a) for a in node.args[3:]):
            return None
    else:
        weight = node.args[1]
    if not isinstance(weight, fx.Node) or weight.op != "get_attr":
        return None
    return _weight_name(_attr(gm, str(weight.target)), str(weight.target), uses)


def _weight_name(w: Any, name: str, uses: Counter[int]) -> str | None:
    """``name`` if ``w`` is a CPU fp32 parameter that needs a gradient and is read once."""
    if not (isinstance(w, nn.Parameter) and w.requires_grad and w.dtype == torch.float32
            and w.device.type == "cpu" and uses[id(w)] == 1):
        return None
    return name


def _attr(gm: fx.GraphModule, target: Any) -> Any:
    obj: Any = gm
    for part in str(target).split("."):
        obj = getattr(obj, part)
    return obj
