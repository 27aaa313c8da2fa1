"""Sum a tensor over the ranks of a group; two CPU ranks swap it and add.

[Note: a pair's sum is a swap]
Tied gradients are summed over the ranks holding a copy, and in a pipeline those are
most often two: the first stage's embedding and the last stage's head. On CPU, gloo's
all-reduce of one tensor between two pinned ranks cost twice what the same ranks
take to send each other the tensor and add what they receive (2026-12-04, 2-core VM,
medians of 30 on the rank that arrives second):

    bytes    all-reduce, together / 10 ms apart    swap, together / 10 ms apart
    4 MiB    4.1 / 5.8 ms                          2.6 / 2.4 ms
    16 MiB   14.2 / 14.6 ms                        9.7 / 9.1 ms

"10 ms apart" is how training arrives: under 1F1B the last stage finishes its
backwards first and waits while the first stage runs its last one. In GPT-2's
(the example) training the tied gradient's all-reduce took a median of 5–6 ms a step
on the first stage's rank, and its 4 MiB had been priced at 3.0 ms.

So a group of two CPU ranks swaps: each sends its tensor and receives its peer's
(``batch_isend_irecv``), in pieces of at most ``PIECE_BYTES`` through one buffer, and
adds. Each rank computes ``mine + theirs``; floating-point addition commutes, so both
hold the same bits, the bits a two-rank all-reduce gives. Larger groups, and GPUs
(where NCCL's all-reduce is what was measured: docs/gpu.md), all-reduce.
``autopipe.runtime.calibrate`` prices a sum over two ranks by timing this function.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

PIECE_BYTES = 16 << 20
"""The largest piece of a swap: the receive buffer a swap allocates."""


def sum_over(tensor: torch.Tensor, group: dist.ProcessGroup | None = None) -> None:
    """Sum ``tensor`` over the ranks of ``group`` (default: every rank), in place on each
    ([Note: a pair's sum is a swap]). Collective: every rank of ``group`` calls it, with
    tensors of one shape and dtype."""
    ranks = dist.get_process_group_ranks(group) if group is not None else list(range(dist.get_world_size()))
    if len(ranks) != 2 or tensor.device.type != "cpu" or not tensor.is_contiguous():
        dist.all_reduce(tensor, group=group)
        return
    me = dist.get_rank()
    peer = ranks[1] if me == ranks[0] else ranks[0]
    flat = tensor.view(-1)
    piece = max(1, PIECE_BYTES // max(1, tensor.element_size()))
    inbox = torch.empty(min(piece, flat.numel()), dtype=tensor.dtype)
    for start in range(0, flat.numel(), piece):
        mine = flat[start:start + piece]
        theirs = inbox[:mine.numel()]
        works = dist.batch_isend_irecv([dist.P2POp(dist.isend, mine, peer, group),
                                        dist.P2POp(dist.irecv, theirs, peer, group)])
        for work in works:
            work.wait()
        mine.add_(theirs)
