"""One rank of tests/test_runtime_shard_comm.py: the sharded step's reduce-scatter and
all-gather over every rank (two: the pair's exchange; three: gloo's collectives)."""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from autopipe.runtime import shard_comm
from autopipe.runtime.shard_comm import Segment, all_gather, reduce_scatter_mean
from autopipe.runtime.zero import split

SHAPES = {"a": ((1000,), torch.float32), "b": ((30, 70), torch.float32), "c": ((333,), torch.bfloat16),
          "d": ((0,), torch.float32), "e": ((129,), torch.float32)}


def held(rank: int) -> dict[str, torch.Tensor]:
    """What rank ``rank`` holds: the same on every rank for a given rank; ``b`` transposed
    (not contiguous)."""
    g = torch.Generator().manual_seed(rank)
    out = {n: torch.randn(shape, generator=g).to(dtype) for n, (shape, dtype) in SHAPES.items()}
    out["b"] = out["b"].reshape(70, 30).t()
    return out


def segments(tensors: dict[str, torch.Tensor], dp: int) -> list[list[Segment]]:
    pieces = split({n: t.numel() for n, t in tensors.items()}, dp, align=8)
    out: list[list[Segment]] = [[] for _ in range(dp)]
    for x in pieces:
        out[x.replica].append((tensors[x.name], x.start, x.stop))
    return out


def flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1)


def main() -> None:
    dist.init_process_group("gloo")
    me, dp = dist.get_rank(), dist.get_world_size()
    for bucket in (1 << 20, 96):  # one round per dtype; many rounds of 96 bytes
        shard_comm.BUCKET_BYTES = bucket  # type: ignore[misc]
        grads = held(me)
        reduce_scatter_mean(segments(grads, dp), me, None)
        everyone = [held(r) for r in range(dp)]
        for t, a, b in segments(grads, dp)[me]:
            name = next(n for n, g in grads.items() if g is t)
            want = sum(flat(h[name])[a:b].float() for h in everyone[1:]) + flat(everyone[0][name])[a:b].float()
            got = flat(t)[a:b].float()
            if dp == 2:  # the pair's (mine + theirs) / 2: the bits of the all-reduce's mean
                pair = (flat(everyone[me][name])[a:b] + flat(everyone[1 - me][name])[a:b]) / 2
                assert torch.equal(flat(t)[a:b], pair), (name, a, b)
            torch.testing.assert_close(got, want / dp, msg=f"{bucket}: {name}[{a}:{b}]",
                                       **({"rtol": 1e-2, "atol": 1e-2} if t.dtype == torch.bfloat16 else {}))
        for k, owned in enumerate(segments(grads, dp)):
            for t, a, b in owned if k != me else ():
                name = next(n for n, g in grads.items() if g is t)
                assert torch.equal(flat(t)[a:b], flat(everyone[me][name])[a:b]), f"{name}: not mine, changed"
        values = held(me)
        all_gather(segments(values, dp), me, None)
        for k, owned in enumerate(segments(values, dp)):
            for t, a, b in owned:
                name = next(n for n, g in values.items() if g is t)
                assert torch.equal(flat(t)[a:b], flat(everyone[k][name])[a:b]), f"{bucket}: {name} of {k}"
        assert not values["b"].is_contiguous()
    dist.destroy_process_group()
    print("ok", me, file=sys.stderr)


if __name__ == "__main__":
    main()
