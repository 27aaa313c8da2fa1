"""One rank of tests/test_runtime_sum_over.py: sums over groups of two and three ranks."""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from autopipe.runtime import sum_over as module
from autopipe.runtime.sum_over import sum_over


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
    if world > 2:  # a group of three all-reduces
        t = own(rank, 1000)
        sum_over(t)
        check(t, list(range(world)), None, "three ranks")
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
