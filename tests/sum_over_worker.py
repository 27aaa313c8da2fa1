"""One rank of tests/test_runtime_sum_over.py: sums over groups of two and three ranks."""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from autopipe.runtime import sum_over as module
from autopipe.runtime.sum_over import sum_over, sum_rows_over


def own(rank: int, n: int, dtype: torch.dtype = torch.float32, transposed: bool = False) -> torch.Tensor:
    """What rank ``rank`` holds: the same on every rank for a given rank."""
    t = torch.randn(n, generator=torch.Generator().manual_seed(rank)).to(dtype)
    return t.reshape(8, n // 8).t() if transposed else t


def check(out: torch.Tensor, ranks: list[int], group: dist.ProcessGroup | None, tag: str) -> None:
    """``out`` is the sum over ``ranks`` to the bit, and every rank of ``group`` holds the same bits."""
    n, transposed = out.numel(), not out.is_contiguous()
    want = own(ranks[0], n, out.dtype, transposed)
    for r in ranks[1:]:
        want = want + own(r, n, out.dtype, transposed)
    if len(ranks) == 2:  # a two-rank sum: bitwise ``a + b`` (addition commutes)
        assert torch.equal(out, want), tag
    else:
        torch.testing.assert_close(out, want, msg=tag)
    gathered = [torch.empty_like(out) for _ in ranks]
    dist.all_gather(gathered, out.contiguous(), group=group)
    assert all(torch.equal(g, out) for g in gathered), f"{tag}: ranks disagree"


ROWS = {"dense": None, "none": [], "some": [1, 4, 5, 30], "others": [0, 4, 31]}
"""Rows a rank's tensor is zero outside (None: dense)."""


def with_rows(rank: int, rows: list[int] | None) -> torch.Tensor:
    """A 32 × 6 table as rank ``rank`` holds it: its own values, zero outside ``rows``."""
    t = own(rank, 32 * 6).view(32, 6)
    if rows is not None:
        keep = torch.zeros(32, 1)
        keep[rows] = 1.0
        t = t * keep
    return t


def rows_cases(rank: int, pair: list[int], group: dist.ProcessGroup | None) -> None:
    """Each pair of row sets: both ranks hold the dense sum of their tables, to the value
    (and to the bit in every row that either wrote), and the same bits; a dense pair swaps."""
    cases = [("dense", "dense"), ("some", "dense"), ("dense", "some"), ("some", "others"),
             ("none", "dense"), ("none", "some"), ("none", "none")]
    all_reduce = dist.all_reduce
    for first, second in cases:
        mine = first if rank == pair[0] else second
        rows = ROWS[mine]
        t = with_rows(rank, rows)
        dist.all_reduce = None  # type: ignore[assignment]  # a CPU pair never all-reduces
        sum_rows_over(t, None if rows is None else torch.tensor(rows, dtype=torch.int64), group)
        dist.all_reduce = all_reduce
        want = with_rows(pair[0], ROWS[first]) + with_rows(pair[1], ROWS[second])
        tag = f"rows {first} + {second}"
        assert torch.equal(t, want), tag
        gathered = [torch.empty_like(t) for _ in pair]
        dist.all_gather(gathered, t, group=group)
        assert all(torch.equal(g, t) for g in gathered), f"{tag}: ranks disagree"


def main() -> int:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    pair = [0, world - 1]
    group = None if world == 2 else dist.new_group(pair)
    if rank in pair:
        all_reduce = dist.all_reduce
        for n, piece in ((1 << 16, module.PIECE_BYTES), (1000, 64), (0, 64)):  # one piece, many, none
            module.PIECE_BYTES = piece
            t = own(rank, n)
            dist.all_reduce = None  # type: ignore[assignment]  # a pair of CPU ranks swaps
            sum_over(t, group)
            dist.all_reduce = all_reduce
            check(t, pair, group, f"pair n={n} piece={piece}")
        module.PIECE_BYTES = 16 << 20
        t = own(rank, 64, torch.float64, transposed=True)  # not contiguous: all-reduced
        sum_over(t, group)
        check(t, pair, group, "pair, transposed")
        # the swap gives what gloo's all-reduce gives, to the bit
        a, b = own(rank, 4096), own(rank, 4096)
        sum_over(a, group)
        dist.all_reduce(b, group=group)
        assert torch.equal(a, b), "swap against all-reduce"
        rows_cases(rank, pair, group)
    if world > 2:  # a group of three all-reduces
        t = own(rank, 1000)
        sum_over(t)
        check(t, list(range(world)), None, "three ranks")
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
