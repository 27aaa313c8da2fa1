"""One message per cut: the values a stage sends its successor travel packed.

[Note: one message per cut]
torch's schedules post one send and one receive per tensor a stage returns, and its
successor's backward one per gradient. The plan prices a cut as one message each way: the
send latency once, and the bytes of all its values over the link, forward, and of their
gradients back (a second message forward for the values it marks as going forward only,
below; [Note: what a cut sends] in ``autopipe.schedule.traffic``). On the CPU ranks of a 2-core
VM over gloo, each message beyond the first cost far more than that (2026-12-05: a tiny
two-stage model, 8 micro-batches under 1F1B, pinned ranks; the 10th percentile of 37
steps): one 256-byte tensor a cut, 4.4 ms a step; four, 20 ms. The four messages of each
forward and backward made the two ranks' posts meet their peers' (the slow posts of
[Note: a busy core while a rank waits] in ``autopipe.runtime.busy_core``) in almost every
step. The U-Net example's balanced plan sends three tensors (128, 64 and 32 KiB) at its cut;
the transformers' cuts send their hidden states with a boolean attention mask (GPT-2, BERT),
and Llama's its rotary cos and sin too.

So ``prepare`` makes the values that cross each cut into one tensor (``pack_groups``):
the sending stage returns ``pack`` of them where it returned the first of them, and the
receiving stage takes that one tensor where it took the first and reads each value as a
view of it (``unpack``: one ``split``, whose backward makes one gradient of the whole
message, sent back as one). The message has the dtype of the values with a gradient that
weigh the most bytes (with none, the dtype the values share, or bytes); a value of another
dtype travels as its bytes, padded to 16 and placed first, so that each such value starts
aligned in the message and is read back by a view of its bytes. One with a gradient (a
bfloat16 model's hidden states next to the float32 values of a norm) keeps it: its bytes go
through a custom Function whose backward reads the message's gradient back as its bytes
(``_AsBytes``, ``_FromBytes``), so the gradients of both dtypes come back in one message,
each to the bit. The message's gradient is then no float32 number where bfloat16 bits fill
it, and nothing computes on it: autograd's ``split`` and ``cat`` and the transport only move
it, and its parts without a gradient are zeros, which are zeros in any dtype. (A second
message per dtype, as the runtime sent until 2026-12-06, cost 14–16 ms a step on gloo
against its 0.7 ms of latency: [Note: a busy core while a rank waits].) Which values have
a gradient is what the stages' fake run finds (``stage_metas``): a value without one
(Mixtral's count of tokens per expert, a float it takes a cumulative sum of as integers)
is read as a detached view, so it arrives without one; its part of the message's gradient
is zeros, and goes back with the rest, as the plan prices it. The values the plan marks as
going forward only (``Send.forward_only``: no gradient, and larger than a send latency's
worth of bytes, ``autopipe.partition.problem.Config.join_bytes``: a causal mask at a long
sequence, an ALiBi bias of heads × sequence² floats next to hidden states of sequence ×
width), whose zeros back would cost more than a message of their own, travel together in
one, and no gradient comes back for them ([Note: values without a gradient] in
``autopipe.trace.no_grad``). A plan marks none where it was priced the same bytes both ways.
A value its stage writes in place as it came (LongT5's integer block count,
``detach_``-ed: a view cannot be) travels alone, as it did. The sender pays a copy of what it packs (a
``cat``); the views cost nothing, and the receiving stage's ops see contiguous values, as
they did ([Note: received layouts] in ``autopipe.runtime.layouts``). Values and gradients
are the same to the bit: packing moves bytes and computes nothing. ``Split.stages[s].inputs``
and ``.outputs`` still name the values; the stage modules' positional inputs and outputs
are the messages.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

from autopipe.runtime.meta import StageMeta
from autopipe.runtime.split import Split
from autopipe.trace.aliasing import written_in_place

ALIGN = 16
"""Bytes a value that travels as its bytes is padded to: any dtype's element size divides it."""

Kind = tuple[torch.dtype, bool]
"""A value's dtype and whether it has a gradient."""


@dataclass(frozen=True)
class Group:
    """Values that cross a cut as one message: ``members`` by position, in the message's order."""

    dtype: torch.dtype
    """The message's dtype."""
    members: tuple[int, ...]


def pack_groups(kinds: Sequence[Kind | None], alone: Sequence[bool] = (),
                nbytes: Sequence[int] = ()) -> list[Group]:
    """The messages of a cut of values of these kinds (None: a value that travels as a tensor
    of its own), two values or more each ([Note: one message per cut]): the values with a
    gradient and those without one in one message, of the dtype whose values with a gradient
    weigh the most (``nbytes``, each 1 where not given; the first such by position on a tie),
    but for those ``alone`` marks (the plan's ``Send.forward_only``), which travel in one of
    their own, as do all of them where none has a gradient."""
    dtype_of = {i: kind[0] for i, kind in enumerate(kinds) if kind is not None}
    weight: dict[torch.dtype, int] = {}
    for i, kind in enumerate(kinds):
        if kind is not None and kind[1]:
            weight[kind[0]] = weight.get(kind[0], 0) + (nbytes[i] if i < len(nbytes) else 1)
    grads = [i for i, kind in enumerate(kinds) if kind is not None and kind[1]]
    rest = [i for i, kind in enumerate(kinds) if kind is not None and not kind[1]]
    lone = [i for i in rest if i < len(alone) and alone[i]] if grads else rest
    messages = []
    if grads:
        heaviest = max(weight.values())
        carrier = next(dtype_of[i] for i in grads if weight[dtype_of[i]] == heaviest)
        messages.append((carrier, sorted(grads + [i for i in rest if i not in lone])))
    if lone:
        dtypes = {dtype_of[i] for i in lone}
        messages.append((dtypes.pop() if len(dtypes) == 1 else torch.uint8, lone))
    out = []
    for dtype, members in messages:
        if len(members) > 1:
            as_bytes = [i for i in members if dtype_of[i] != dtype]
            out.append(Group(dtype, tuple(as_bytes + [i for i in members if i not in as_bytes])))
    return sorted(out, key=lambda g: min(g.members))


def _elements(numel: int, dtype: torch.dtype, message: torch.dtype) -> int:
    """A value's elements in a message of dtype ``message``: its own, or its bytes padded to ``ALIGN``."""
    if dtype == message:
        return numel
    return -(-numel * dtype.itemsize // ALIGN) * ALIGN // message.itemsize


def _to_bytes(t: torch.Tensor, message: torch.dtype) -> torch.Tensor:
    """``t``'s bytes, padded to ``ALIGN``, as a 1-D tensor of dtype ``message``."""
    raw = t.contiguous().view(-1).view(torch.uint8)
    pad = _elements(t.numel(), t.dtype, message) * message.itemsize - raw.numel()
    if pad:
        raw = torch.cat([raw, raw.new_zeros(pad)])
    return raw.view(message)


def _from_bytes(part: torch.Tensor, dtype: torch.dtype, shape: Sequence[int]) -> torch.Tensor:
    """The value of ``dtype`` and ``shape`` whose bytes (``_to_bytes``) begin the 1-D ``part``."""
    nbytes = math.prod(shape) * dtype.itemsize
    return part.contiguous().view(torch.uint8)[:nbytes].view(dtype).view(tuple(shape))


class _AsBytes(torch.autograd.Function):
    """A value as its bytes in a message of another dtype; its gradient, read back from the
    message's gradient as its bytes ([Note: one message per cut])."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor, message: torch.dtype) -> torch.Tensor:
        ctx.value = (t.dtype, tuple(t.shape))
        return _to_bytes(t.detach(), message)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _from_bytes(grad, *ctx.value), None


class _FromBytes(torch.autograd.Function):
    """A value read from its bytes in a message; its gradient goes back as its bytes."""

    @staticmethod
    def forward(ctx: Any, part: torch.Tensor, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
        ctx.message = part.dtype
        return _from_bytes(part.detach(), dtype, shape)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return _to_bytes(grad, ctx.message), None, None


def _as_bytes(t: torch.Tensor, message: torch.dtype) -> torch.Tensor:
    """``_to_bytes``, keeping ``t``'s gradient where it has one."""
    if not t.requires_grad:
        return _to_bytes(t.detach(), message)
    out: torch.Tensor = _AsBytes.apply(t, message)  # type: ignore[no-untyped-call]
    return out


def _read_bytes(part: torch.Tensor, dtype: torch.dtype, shape: Sequence[int], grad: bool) -> torch.Tensor:
    """``_from_bytes``, with a gradient back into ``part`` where ``grad``, else detached."""
    if not grad:
        return _from_bytes(part.detach(), dtype, shape)
    out: torch.Tensor = _FromBytes.apply(part, dtype, tuple(shape))  # type: ignore[no-untyped-call]
    return out


def pack(dtype: torch.dtype, *tensors: torch.Tensor) -> torch.Tensor:
    """The elements of ``tensors`` one after another, in one new 1-D tensor of ``dtype``;
    a tensor of another dtype as its bytes, padded to ``ALIGN`` (with its gradient, where it
    has one: read back from the message's as its bytes)."""
    return torch.cat([t.reshape(-1) if t.dtype == dtype else _as_bytes(t, dtype) for t in tensors])


def unpack(packed: torch.Tensor, values: Sequence[tuple[torch.dtype, Sequence[int], bool]]) -> tuple[torch.Tensor, ...]:
    """The tensors ``pack`` joined, as views of ``packed``, given each one's dtype, shape and
    whether it has a gradient (one without is a detached view)."""
    sizes = [_elements(math.prod(shape), dtype, packed.dtype) for dtype, shape, _ in values]
    out = []
    for part, (dtype, shape, grad) in zip(torch.split(packed, sizes), values):
        if dtype != packed.dtype:
            part = _read_bytes(part, dtype, shape, grad)
        elif not grad:
            part = part.detach()
        out.append(part.view(tuple(shape)))
    return tuple(out)


def _positions(count: int, groups: Sequence[Group]) -> list[int | Group]:
    """The new positional order: a message where its first value (by position) was, the others dropped."""
    first = {min(group.members): group for group in groups}
    members = {i for group in groups for i in group.members}
    return [first.get(i, i) for i in range(count) if i in first or i not in members]


def pack_outputs(gm: fx.GraphModule, groups: Sequence[Group]) -> None:
    """Make ``gm`` return each group of its outputs as one ``pack``ed tensor ([Note: one message per cut])."""
    out = next(n for n in gm.graph.nodes if n.op == "output")
    results = list(out.args[0])
    new: list[object] = []
    with gm.graph.inserting_before(out):
        for p in _positions(len(results), groups):
            new.append(gm.graph.call_function(pack, (p.dtype, *(results[i] for i in p.members)))
                       if isinstance(p, Group) else results[p])
    out.args = (tuple(new),)
    gm.graph.lint()
    gm.recompile()


def unpack_inputs(gm: fx.GraphModule, groups: Sequence[Group], values: Sequence[torch.Tensor]) -> None:
    """Make ``gm`` take each group of its inputs as one packed tensor and read the values as
    views of it; ``values``: the inputs as ``stage_metas`` finds them, by position ([Note: one
    message per cut])."""
    graph = gm.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    body = next(n for n in graph.nodes if n.op != "placeholder")
    for k, group in enumerate(groups):
        with graph.inserting_before(placeholders[min(group.members)]):
            packed = graph.placeholder(f"packed_{k}")
        with graph.inserting_before(body):
            layout = tuple((values[i].dtype, tuple(values[i].shape), values[i].requires_grad) for i in group.members)
            views = graph.call_function(unpack, (packed, layout))
            for j, i in enumerate(group.members):
                value = graph.call_function(operator.getitem, (views, j))
                placeholders[i].replace_all_uses_with(value)
    for group in groups:
        for i in group.members:
            graph.erase_node(placeholders[i])
    graph.lint()
    gm.recompile()


def pack_cuts(split: Split, metas: Sequence[StageMeta], alone: Collection[str] = ()) -> list[StageMeta]:
    """Make each of ``split``'s cuts send its values as the messages of ``pack_groups``.
    ``metas``: the split's stages as ``stage_metas`` finds them; ``alone``: the values that go
    forward only (the plan's ``Send.forward_only``). Returns the stages as they are then (a
    message: 1-D, its values' elements or bytes)."""
    inputs = [list(m.inputs) for m in metas]
    outputs = [list(m.outputs) for m in metas]
    for b, meta in enumerate(metas[:-1]):
        sent = meta.outputs
        receiver = split.stages[b + 1].module
        placeholders = [n for n in receiver.graph.nodes if n.op == "placeholder"]
        body = [n for n in receiver.graph.nodes if n.op not in ("placeholder", "output")]
        # a value its stage writes in place as it came (an integer one: floats enter through
        # a copy, [Note: received values written in place]) keeps a tensor of its own
        written = written_in_place(receiver, body, [n.name for n in placeholders])
        groups = pack_groups([None if ph.name in written else (t.dtype, t.requires_grad)
                              for ph, t in zip(placeholders, sent)],
                             [name in alone for name in split.stages[b].outputs],
                             [t.numel() * t.element_size() for t in sent])
        if not groups:
            continue
        pack_outputs(split.stages[b].module, groups)
        unpack_inputs(receiver, groups, sent)
        messages: list[torch.Tensor] = []
        for p in _positions(len(sent), groups):
            if isinstance(p, Group):
                size = sum(_elements(sent[i].numel(), sent[i].dtype, p.dtype) for i in p.members)
                message = torch.empty(size, dtype=p.dtype, device="meta")
                messages.append(message.requires_grad_(any(sent[i].requires_grad for i in p.members)))
            else:
                messages.append(sent[p])
        outputs[b] = inputs[b + 1] = messages
    return [StageMeta(inputs=tuple(i), outputs=tuple(o)) for i, o in zip(inputs, outputs)]


def messages_per_cut(metas: Sequence[StageMeta]) -> list[tuple[int, int]]:
    """Each cut's messages a micro-batch as its stages send them: (forward, back), where the
    ones back are the gradients of the messages that have one."""
    return [(len(m.outputs), sum(1 for t in m.outputs if t.requires_grad)) for m in metas[:-1]]
