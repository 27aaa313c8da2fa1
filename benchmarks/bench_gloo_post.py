"""What posting one gloo send costs the sender's thread, by size, with the receiver waiting or busy.

    python -m benchmarks.bench_gloo_post [--sizes 0,16K,64K,224K,1M,4M] [--repeats 30]

Two ranks on this machine, each pinned to its own core as ``autopipe train`` pins them.
Rank 0 posts ``dist.isend`` of each size and times the call (wall and thread CPU time)
while rank 1 enters ``recv`` at the same moment (``waiting``), 1 ms before (``ready``),
or 2 ms after (``busy``: it computes first); then rank 0 waits for the send to finish. Prints the median and the 90th
percentile of the post per size and case. See docs/cost-model.md, "2026-12-05: what a
gloo send costs its sender".
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time

SIZES = "0,16K,64K,224K,1M,4M"
CASES = ("waiting", "ready", "busy")
"""The receiver enters ``recv`` as the sender posts (both leave a barrier), 1 ms before it,
or 2 ms after it (it computes 3 ms first)."""
SLOW_S = 1e-3
"""A post this long is a slow one."""
_UNITS = {"K": 1 << 10, "M": 1 << 20}


def parse_size(text: str) -> int:
    """Bytes from ``0``, ``224K``, ``4M`` (binary units)."""
    text = text.strip().upper()
    scale = _UNITS.get(text[-1:], 1)
    return int(text[:-1] if scale > 1 else text) * scale


def _busy(seconds: float) -> None:
    import torch

    a = torch.randn(128, 128)
    t = time.perf_counter()
    while time.perf_counter() - t < seconds:
        a @ a


def _spin() -> None:
    while True:
        os.sched_yield()


def rank_main(sizes: list[int], repeats: int, spin: bool = False) -> None:
    """One rank's part (under the launcher: ``RANK``, ``WORLD_SIZE``, ``MASTER_*``)."""
    import torch
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    os.sched_setaffinity(0, {rank % (os.cpu_count() or 1)})
    torch.set_num_threads(1)
    if spin:  # a thread that never lets the core idle (autopipe's BusyCore, always on)
        threading.Thread(target=_spin, daemon=True).start()
    dist.init_process_group("gloo")
    peer = 1 - rank
    for n in sizes:
        x = torch.zeros(max(n // 4, 1))
        for case in CASES:
            wall, cpu = [], []
            for _ in range(repeats):
                dist.barrier()
                if rank == 0:
                    if case != "waiting":
                        time.sleep(0.001)  # busy: the receiver computes; ready: it has waited 1 ms
                    t, c = time.perf_counter(), time.thread_time()
                    work = dist.isend(x, peer)
                    wall.append(time.perf_counter() - t)
                    cpu.append(time.thread_time() - c)
                    work.wait()
                else:
                    if case == "busy":
                        _busy(0.003)
                    dist.recv(x, peer)
            if rank == 0:
                p90 = sorted(wall)[int(0.9 * (len(wall) - 1))]
                slow = [(w, c) for w, c in zip(wall, cpu) if w > SLOW_S]
                print(f"{n / 1024:8.0f} KiB  {case:7s}  post {statistics.median(wall) * 1e6:8.1f} µs "
                      f"(thread CPU {statistics.median(cpu) * 1e6:7.1f} µs), 90th percentile {p90 * 1e6:8.1f} µs; "
                      f"over 1 ms: {len(slow)} of {len(wall)}"
                      + (f", median {statistics.median(w for w, _ in slow) * 1e3:.2f} ms with "
                         f"{statistics.median(c for _, c in slow) * 1e6:.0f} µs of thread CPU" if slow else ""),
                      flush=True)
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=SIZES, help=f"comma-separated sizes (default {SIZES})")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--spin", action="store_true",
                    help="each rank also runs a thread calling sched_yield in a loop, so its core never idles")
    ap.add_argument("--rank", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    if args.rank:
        rank_main(sizes, args.repeats, args.spin)
        return 0
    from autopipe.runtime.launch import launch

    print(f"gloo isend posted by rank 0 to rank 1, 2 ranks on their own cores, {args.repeats} posts a case"
          + (", a spinning thread on each core" if args.spin else ""))
    result = launch([sys.executable, "-m", "benchmarks.bench_gloo_post", "--rank", "--sizes", args.sizes,
                     "--repeats", str(args.repeats), *(["--spin"] if args.spin else [])], 2, env={"OMP_NUM_THREADS": "1"}, timeout_s=300)
    return result.code


if __name__ == "__main__":
    raise SystemExit(main())
