"""The sharded step's collectives: gradients reduce-scattered to the pieces' owners, values
all-gathered from them, over one stage's replicas.

::

    dp 2, one dtype, each replica's pieces laid end to end, cut into rounds of C elements

      replica 0's pieces  [a ......... b[0:k]]       round 0: [r0's 0:C | r1's 0:C]
      replica 1's pieces  [b[k:] .... c ......]      round 1: [r0's C:2C | r1's C:2C]  ...

    reduce-scatter (after the backward): replica r receives the sum of round i's r-th part
    all-gather (after the owners' step):  every replica receives every part

[Note: reduce-scatter and all-gather in rounds]
ZeRO-1 as DeepSpeed and Megatron run it: each replica needs the mean gradient of the pieces
it steps only ([Note: the sharded optimizer step] in ``autopipe.runtime.zero``), so the
gradients are reduce-scattered, (dp − 1)/dp of their bytes through each rank, and after the
step each owner's updated values are all-gathered, as many again: together the bytes of one
all-reduce of the gradients, which is what the planner prices ([Note: the data-parallel
sync] in ``autopipe.partition.replicas``). Until 2026-12-07 the runtime all-reduced the
gradients whole and then broadcast each owner's values, half an all-reduce more, and the
plan priced that gather on top.

A replica's pieces are not one tensor: they are ranges of several parameters, and the
replicas' ranges differ in length by up to a cut's rounding (``ALIGN``), and more where a
dtype, or the tied parameters (summed over their holders first, and so left out of the
reduce-scatter) fall unevenly. So each replica's pieces of one dtype are laid end to end
and cut into rounds of ``C`` elements (``BUCKET_BYTES`` in all per round, as the
all-reduce's buckets): round ``i`` is every replica's elements ``[iC, (i+1)C)``, each
padded to the round's longest, and runs as one ``reduce_scatter_tensor`` or
``all_gather_into_tensor``. Every replica knows every replica's pieces, so all lay out the
same rounds and their collectives pair up.

Two CPU ranks exchange the parts instead (``batch_isend_irecv``): each sends the other its
part and adds what it receives to its own (the reduce-scatter), or sends its part and
receives the other's (the all-gather), as ``sum_over`` swaps instead of gloo's all-reduce
([Note: a pair's sum is a swap] in ``autopipe.runtime.sum_over``). Its sum ``mine +
theirs`` is the bits of the pair's all-reduce, so a sharded run of two replicas trains bit
for bit as an unsharded one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist

from autopipe.runtime.data_parallel import BUCKET_BYTES
from autopipe.runtime.sum_over import _exchange, _peer

Segment = tuple[torch.Tensor, int, int]
"""A tensor, and elements ``start:stop`` of it flattened."""


class _Flat:
    """1-D views of tensors: the tensor's own memory where it is contiguous, else a
    contiguous copy, written back by ``write_back``."""

    def __init__(self) -> None:
        self._copies: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        if t.is_contiguous():
            return t.view(-1)
        if id(t) not in self._copies:
            self._copies[id(t)] = (t, t.reshape(-1).clone())
        return self._copies[id(t)][1]

    def write_back(self) -> None:
        for t, flat in self._copies.values():
            t.copy_(flat.view(t.shape))


def _runs(views: Sequence[torch.Tensor], size: int) -> Iterator[list[torch.Tensor]]:
    """The concatenation of ``views`` in consecutive runs of ``size`` elements (the last
    shorter), each as the list of sub-views that covers it."""
    run: list[torch.Tensor] = []
    room = size
    for v in views:
        at = 0
        while at < v.numel():
            take = min(room, v.numel() - at)
            run.append(v[at:at + take])
            at += take
            room -= take
            if room == 0:
                yield run
                run, room = [], size
    if run:
        yield run


def _rounds(segments: Sequence[Sequence[Segment]], flat: _Flat) -> Iterator[list[list[torch.Tensor]]]:
    """Per dtype and device, per round, each replica's views ([Note: reduce-scatter and
    all-gather in rounds]); a replica with fewer elements gets empty lists in later rounds."""
    keys: dict[tuple[torch.dtype, torch.device], None] = {}
    for owned in segments:
        for t, _, _ in owned:
            keys.setdefault((t.dtype, t.device))
    for dtype, device in keys:
        views = [[flat(t)[a:b] for t, a, b in owned if (t.dtype, t.device) == (dtype, device) and b > a]
                 for owned in segments]
        size = max(1, BUCKET_BYTES // torch.empty((), dtype=dtype).element_size() // len(segments))
        runs = [list(_runs(v, size)) for v in views]
        for i in range(max(map(len, runs))):
            yield [r[i] if i < len(r) else [] for r in runs]


def _length(views: Sequence[torch.Tensor]) -> int:
    return sum(v.numel() for v in views)


def _cat(views: Sequence[torch.Tensor], into: torch.Tensor) -> torch.Tensor:
    """``views`` laid end to end at the start of ``into``; returns that part."""
    at = 0
    for v in views:
        into[at:at + v.numel()].copy_(v)
        at += v.numel()
    return into[:at]


def _spread(src: torch.Tensor, views: Sequence[torch.Tensor]) -> None:
    at = 0
    for v in views:
        v.copy_(src[at:at + v.numel()])
        at += v.numel()


@torch.no_grad()
def reduce_scatter_mean(segments: Sequence[Sequence[Segment]], me: int, group: dist.ProcessGroup | None) -> None:
    """Write into each of replica ``me``'s segments the mean of it over the replicas
    (collective over ``group``, whose ranks are the replicas in order; every replica calls it
    with the same segments of its own gradients). The other segments are left as they were."""
    dp = len(segments)
    flat = _Flat()
    for parts in _rounds(segments, flat):
        sizes = [_length(p) for p in parts]
        mine = parts[me]
        probe = next(v for p in parts for v in p)  # a slice of a 1-D view: contiguous
        peer = _peer(probe, group)
        in_place = peer is not None and len(mine) == 1  # the sum lands in the gradient itself
        if peer is not None:
            theirs = parts[1 - me]
            out = mine[0] if in_place else _cat(mine, probe.new_empty(sizes[me]))
            inbox = probe.new_empty(sizes[me])
            _exchange(peer, group, [_cat(theirs, probe.new_empty(sizes[1 - me]))], [inbox])
            out.add_(inbox)
        else:
            width = max(sizes)
            buffer = probe.new_zeros(dp * width)
            for k, p in enumerate(parts):
                _cat(p, buffer[k * width:(k + 1) * width])
            out = probe.new_empty(width)
            dist.reduce_scatter_tensor(out, buffer, group=group)
            out = out[:sizes[me]]
        out.div_(dp)
        if not in_place:
            _spread(out, mine)
    flat.write_back()


@torch.no_grad()
def all_gather(segments: Sequence[Sequence[Segment]], me: int, group: dist.ProcessGroup | None) -> None:
    """Give every replica each replica's segments as that replica holds them (collective
    over ``group``, whose ranks are the replicas in order)."""
    dp = len(segments)
    flat = _Flat()
    for parts in _rounds(segments, flat):
        sizes = [_length(p) for p in parts]
        probe = next(v for p in parts for v in p)
        peer = _peer(probe, group)
        if peer is not None:
            theirs = probe.new_empty(sizes[1 - me])
            _exchange(peer, group, [_cat(parts[me], probe.new_empty(sizes[me]))], [theirs])
            _spread(theirs, parts[1 - me])
            continue
        width = max(sizes)
        mine = probe.new_zeros(width)
        _cat(parts[me], mine)
        out = probe.new_empty(dp * width)
        dist.all_gather_into_tensor(out, mine, group=group)
        for k, p in enumerate(parts):
            if k != me:
                _spread(out[k * width:], p)
    flat.write_back()
