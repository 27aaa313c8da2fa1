"""What a sharded optimizer's sync costs against DDP's all-reduce, on gloo ranks of this machine.

    python -m benchmarks.bench_zero_sync [--sizes 4M,16M,64M] [--ranks 2] [--repeats 15]

A stage's parameters (eight fp32 tensors of the given bytes in all) on each rank; per size,
the median of ``--repeats`` runs (after one warm-up) of, interleaved:

- ``ddp``: the gradients' all-reduce as ``ReplicaSync`` runs it (``sum_over`` of flat buckets,
  then ``/ dp``): the plan's price of a data-parallel sync, sharded or not ([Note: the
  sharded sync's price] in ``autopipe.partition.replicas``);
- ``zero1``: the sharded step's reduce-scatter of the gradients and all-gather of the
  updated pieces ([Note: reduce-scatter and all-gather in rounds] in
  ``autopipe.runtime.shard_comm``);
- ``before``: the runtime until 2026-12-07: the all-reduce, then each owner's pieces sent
  to the others (timed as the same all-gather; the broadcasts it replaced moved its bytes).

Prints each median on the slowest rank and the ratios against ``ddp``: the plan promises
``zero1 / ddp`` = 1. Each rank is pinned to its own core.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from benchmarks.bench_gloo_post import parse_size

SIZES = "4M,16M,64M"
TENSORS = 8


def _medians(size: int, rank: int, dp: int, repeats: int) -> dict[str, float]:
    """This rank's median seconds of each sync of ``size`` bytes of parameters."""
    import torch
    import torch.distributed as dist

    from autopipe.runtime.data_parallel import _buckets, _unflatten
    from autopipe.runtime.shard_comm import Segment, all_gather, reduce_scatter_mean
    from autopipe.runtime.sum_over import sum_over
    from autopipe.runtime.zero import split

    n = size // 4 // TENSORS
    params = {f"w{i}": torch.randn(n + 97 * i) for i in range(TENSORS)}
    grads = {k: torch.randn_like(v) for k, v in params.items()}
    pieces = split({k: v.numel() for k, v in params.items()}, dp)

    def segments(of: dict[str, torch.Tensor]) -> list[list[Segment]]:
        out: list[list[Segment]] = [[] for _ in range(dp)]
        for x in pieces:
            out[x.replica].append((of[x.name], x.start, x.stop))
        return out

    def ddp() -> None:
        for bucket in _buckets(grads.values()):
            flat = torch.cat([g.reshape(-1) for g in bucket])
            sum_over(flat)
            _unflatten(flat.div_(dp), bucket)

    def zero1() -> None:
        reduce_scatter_mean(segments(grads), rank, None)
        all_gather(segments(params), rank, None)

    def before() -> None:
        ddp()
        all_gather(segments(params), rank, None)

    runs: dict[str, list[float]] = {"ddp": [], "zero1": [], "before": []}
    for k in range(repeats + 1):
        for name, fn in (("ddp", ddp), ("zero1", zero1), ("before", before)):
            dist.barrier()
            t = time.perf_counter()
            fn()
            if k:
                runs[name].append(time.perf_counter() - t)
    return {name: statistics.median(v) for name, v in runs.items()}


def rank_main(sizes: list[int], repeats: int) -> None:
    """One rank's part (under the launcher: ``RANK``, ``WORLD_SIZE``, ``MASTER_*``)."""
    import torch
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    os.sched_setaffinity(0, {rank % (os.cpu_count() or 1)})
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    dp = dist.get_world_size()
    for size in sizes:
        medians = _medians(size, rank, dp, repeats)
        everyone: list[dict[str, float]] = [{} for _ in range(dp)]
        dist.all_gather_object(everyone, medians)
        if rank == 0:
            slowest = {name: max(m[name] for m in everyone) for name in medians}
            print(f"{size / 2**20:7.1f} MiB  ddp {slowest['ddp'] * 1e3:8.2f} ms  zero1 {slowest['zero1'] * 1e3:8.2f} ms "
                  f"({slowest['zero1'] / slowest['ddp']:.2f}x)  before {slowest['before'] * 1e3:8.2f} ms "
                  f"({slowest['before'] / slowest['ddp']:.2f}x)", flush=True)
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=SIZES, help=f"comma-separated parameter bytes (default {SIZES})")
    ap.add_argument("--ranks", type=int, default=2, help="data-parallel replicas (default 2)")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--rank", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    if args.rank:
        rank_main(sizes, args.repeats)
        # every figure is out and the group destroyed; about one run in three on this host
        # (torch 2.13, gloo) then aborted at interpreter exit ("terminate called without an
        # active exception", from a C++ thread: Python's were gone), so the rank leaves now
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    from autopipe.runtime.launch import launch

    print(f"one stage's sync over {args.ranks} gloo replicas, {TENSORS} fp32 tensors, medians of "
          f"{args.repeats} on the slowest rank (the plan prices zero1 as ddp)")
    result = launch([sys.executable, "-m", "benchmarks.bench_zero_sync", "--rank", "--sizes", args.sizes,
                     "--repeats", str(args.repeats)], args.ranks, env={"OMP_NUM_THREADS": "1"}, timeout_s=600)
    return result.code


if __name__ == "__main__":
    raise SystemExit(main())
