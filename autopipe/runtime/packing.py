"""One message per cut and dtype: the values a stage sends its successor travel packed.

[Note: one message per cut]
torch's schedules post one send and one receive per tensor a stage returns, and its
successor's backward one per gradient. The plan prices a cut as one message: the send
latency once, and the bytes of all its values over the link. On the CPU ranks of a 2-core
VM over gloo, each message beyond the first cost far more than that (2026-12-05: a tiny
two-stage model, 8 micro-batches under 1F1B, pinned ranks; the 10th percentile of 37
steps): one 256-byte tensor a cut, 4.4 ms a step; four, 20 ms. The four messages of each
forward and backward made the two ranks' posts meet their peers' (the slow posts of
[Note: a busy core while a rank waits] in ``autopipe.runtime.busy_core``) in almost every
step. The U-Net example's balanced plan sends three tensors (128, 64 and 32 KiB) at its cut.

So ``prepare`` makes the values that cross each cut with one dtype, and either all with a
gradient or all without, into one tensor: the sending stage returns ``pack`` of them (their
elements, concatenated) where it returned the first of them, and the receiving stage takes
that one tensor where it took the first and reads each value as a view of it (``unpack``:
one ``split``, whose backward makes one gradient of the whole message, sent back as one).
Which values have a gradient is what the stages' fake run finds (``stage_metas``): a value
without one (Mixtral's count of tokens per expert, a float it takes a cumulative sum of as
integers) must arrive without one, so it never shares a message with values that have one.
A value alone in its kind travels as it did, and so does one its stage writes in place as
it came (LongT5's integer block count, ``detach_``-ed: a view cannot be). The sender pays a copy of what it packs (a
``cat``); the views cost nothing, and the receiving stage's ops see contiguous values, as
they did ([Note: received layouts] in ``autopipe.runtime.layouts``). Gradients are the same
to the bit: packing moves values and computes nothing. ``Split.stages[s].inputs`` and
``.outputs`` still name the values; the stage modules' positional inputs and outputs are
the messages.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Hashable, Sequence

import torch
import torch.fx as fx

from autopipe.runtime.meta import StageMeta
from autopipe.runtime.split import Split
from autopipe.trace.aliasing import written_in_place


def pack_groups(kinds: Sequence[Hashable | None]) -> list[list[int]]:
    """Positions that travel as one message: each kind (dtype, gradient or not) that two or
    more values share, in the order of their first value; None: a value that travels alone."""
    by_kind: dict[Hashable, list[int]] = {}
    for i, kind in enumerate(kinds):
        if kind is not None:
            by_kind.setdefault(kind, []).append(i)
    return [group for group in by_kind.values() if len(group) > 1]


def pack(*tensors: torch.Tensor) -> torch.Tensor:
    """The elements of ``tensors`` one after another, in one new 1-D tensor."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unpack(packed: torch.Tensor, shapes: Sequence[Sequence[int]]) -> tuple[torch.Tensor, ...]:
    """The tensors ``pack`` joined, as views of ``packed``, given their shapes."""
    sizes = [math.prod(shape) for shape in shapes]
    return tuple(part.view(tuple(shape)) for part, shape in zip(torch.split(packed, sizes), shapes))


def _positions(count: int, groups: Sequence[Sequence[int]]) -> list[int | tuple[int, ...]]:
    """The new positional order: a group where its first member was, the others dropped."""
    first = {group[0]: tuple(group) for group in groups}
    members = {i for group in groups for i in group}
    return [first.get(i, i) for i in range(count) if i in first or i not in members]


def pack_outputs(gm: fx.GraphModule, groups: Sequence[Sequence[int]]) -> None:
    """Make ``gm`` return each group of its outputs as one ``pack``ed tensor ([Note: one message per cut])."""
    out = next(n for n in gm.graph.nodes if n.op == "output")
    results = list(out.args[0])
    new: list[object] = []
    with gm.graph.inserting_before(out):
        for p in _positions(len(results), groups):
            new.append(gm.graph.call_function(pack, tuple(results[i] for i in p)) if isinstance(p, tuple)
                       else results[p])
    out.args = (tuple(new),)
    gm.graph.lint()
    gm.recompile()


def unpack_inputs(gm: fx.GraphModule, groups: Sequence[Sequence[int]],
                  shapes: Sequence[Sequence[int]]) -> None:
    """Make ``gm`` take each group of its inputs as one packed tensor and read the values as
    views of it; ``shapes`` are the inputs' shapes, by position ([Note: one message per cut])."""
    graph = gm.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    body = next(n for n in graph.nodes if n.op != "placeholder")
    for k, group in enumerate(groups):
        with graph.inserting_before(placeholders[group[0]]):
            packed = graph.placeholder(f"packed_{k}")
        with graph.inserting_before(body):
            views = graph.call_function(unpack, (packed, tuple(tuple(shapes[i]) for i in group)))
            for j, i in enumerate(group):
                value = graph.call_function(operator.getitem, (views, j))
                placeholders[i].replace_all_uses_with(value)
    for group in groups:
        for i in group:
            graph.erase_node(placeholders[i])
    graph.lint()
    gm.recompile()


def pack_cuts(split: Split, metas: Sequence[StageMeta]) -> list[StageMeta]:
    """Make each of ``split``'s cuts send its values as ``pack_groups`` of their dtypes and
    gradients into one tensor each. ``metas``: the split's stages as ``stage_metas`` finds
    them; returns them as they are then (a message: its values' elements, 1-D)."""
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
                              for ph, t in zip(placeholders, sent)])
        if not groups:
            continue
        pack_outputs(split.stages[b].module, groups)
        unpack_inputs(receiver, groups, [tuple(t.shape) for t in sent])
        messages: list[torch.Tensor] = []
        for p in _positions(len(sent), groups):
            if isinstance(p, tuple):
                first = sent[p[0]]
                message = torch.empty(sum(sent[i].numel() for i in p), dtype=first.dtype, device="meta")
                messages.append(message.requires_grad_(first.requires_grad))
            else:
                messages.append(sent[p])
        outputs[b] = inputs[b + 1] = messages
    return [StageMeta(inputs=tuple(i), outputs=tuple(o)) for i, o in zip(inputs, outputs)]
