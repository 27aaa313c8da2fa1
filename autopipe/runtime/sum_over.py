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

[Note: a tied embedding's rows]
A tied embedding's gradient on the first stage is zero but for the rows the step's
tokens read (the tied LM: 512 of 32,768; ``rows_only`` in ``autopipe.runtime.grad_accum``
knows them), while the head's copy on the last stage is dense. Swapping whole tensors
sends 16 MiB each way where one way carries nearly nothing. So a tied pair first swaps
one number each, its row count (-1: dense), and then each rank sends what it holds:

    sparse side ─► rows (int64) and their values ─► dense side: index_add_ them
    dense side  ─► the whole tensor ──────────────► sparse side: received into its own
                                                    gradient, its rows' values (kept
                                                    aside first) index_add_ed back

Both hold ``mine + theirs`` in every row written on either side, the bits of a dense
sum (addition commutes), and elsewhere the dense copy's values (a dense sum would add
+0 to them: the same value, though a -0 would become +0). Two sparse sides swap rows
only. The sparse side needs no receive buffer. Between two pinned gloo ranks, the tied
LM's 16 MiB took 7.2 ms this way against 12.7–13.8 ms swapped whole (2026-12-04; timed as
the calibration times it, the embedding's rank 5 ms late: 6.9 against 14.6 ms);
``autopipe.runtime.calibrate`` prices it on its own line (``rows_sum_*``), and the planner
uses that line for a tied weight read by one embedding and one other node
(``Problem.rows_params``).
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
    peer = _peer(tensor, group)
    if peer is None:
        dist.all_reduce(tensor, group=group)
        return
    _swap(tensor, peer, group)


def sum_rows_over(tensor: torch.Tensor, rows: torch.Tensor | None,
                  group: dist.ProcessGroup | None = None) -> None:
    """``sum_over`` for a tensor that may be zero on this rank but for ``rows`` (sorted,
    distinct int64 indices into dim 0; None: dense), in place on each rank ([Note: a tied
    embedding's rows]). Collective: every rank of ``group`` calls it (each with its own
    ``rows``). Groups other than a CPU pair sum the whole tensor."""
    peer = _peer(tensor, group)
    if peer is None or tensor.dim() == 0:
        sum_over(tensor, group)
        return
    counts = torch.tensor([-1 if rows is None else rows.numel()], dtype=torch.int64)
    theirs = torch.empty(1, dtype=torch.int64)
    _exchange(peer, group, [counts], [theirs])
    n = int(theirs.item())
    if rows is None and n < 0:
        _swap(tensor, peer, group)
        return
    table = tensor.view(tensor.shape[0], -1)
    if rows is None:
        sends = [tensor]
    else:
        kept = table.index_select(0, rows)
        sends = [rows, kept]
        if n < 0:
            _exchange(peer, group, sends, [tensor])  # theirs, whole, into mine: my rows are kept
            table.index_add_(0, rows, kept)
            return
    index = torch.empty(n, dtype=torch.int64)
    values = torch.empty((n, table.shape[1]), dtype=tensor.dtype)
    _exchange(peer, group, sends, [index, values])
    table.index_add_(0, index, values)


def _peer(tensor: torch.Tensor, group: dist.ProcessGroup | None) -> int | None:
    """The other rank where ``group`` is a pair and ``tensor`` a contiguous CPU tensor, else None."""
    ranks = dist.get_process_group_ranks(group) if group is not None else list(range(dist.get_world_size()))
    if len(ranks) != 2 or tensor.device.type != "cpu" or not tensor.is_contiguous():
        return None
    return ranks[1] if dist.get_rank() == ranks[0] else ranks[0]


def _exchange(peer: int, group: dist.ProcessGroup | None, sends: list[torch.Tensor],
              recvs: list[torch.Tensor]) -> None:
    """Send ``sends`` to ``peer`` and receive ``recvs`` from it, in order; empty tensors stay home."""
    ops = [dist.P2POp(dist.isend, t, peer, group) for t in sends if t.numel()]
    ops += [dist.P2POp(dist.irecv, t, peer, group) for t in recvs if t.numel()]
    for work in dist.batch_isend_irecv(ops) if ops else ():
        work.wait()


def _swap(tensor: torch.Tensor, peer: int, group: dist.ProcessGroup | None) -> None:
    """Send ``tensor`` whole, receive the peer's in pieces and add each ([Note: a pair's sum is a swap])."""
    flat = tensor.view(-1)
    piece = max(1, PIECE_BYTES // max(1, tensor.element_size()))
    inbox = torch.empty(min(piece, flat.numel()), dtype=tensor.dtype)
    for start in range(0, flat.numel(), piece):
        mine = flat[start:start + piece]
        theirs = inbox[:mine.numel()]
        _exchange(peer, group, [mine], [theirs])
        mine.add_(theirs)
