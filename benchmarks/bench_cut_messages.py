"""What a cut of several tensors costs a pipeline step, packed into one message per dtype or sent one by one.

    python -m benchmarks.bench_cut_messages [--tensors 4] [--floats 64,16384] [--steps 40]

A tiny two-stage model (two 16-wide linear layers, 4 rows a micro-batch) whose first stage
hands its successor ``--tensors`` float tensors of the same shape: ``floats`` elements each
(the first layer's output, repeated). Two gloo ranks on their own cores train it under 1F1B,
8 micro-batches a step, through ``autopipe.runtime.build`` as ``autopipe train`` runs it, in
three ways per size: one tensor of all the bytes (the baseline), the tensors packed into one
message ([Note: one message per cut] in ``autopipe.runtime.packing``, the runtime's default),
and the tensors sent one by one as torch's schedules send them (``prepare(pack=False)``).
Prints each one's step time (10th percentile and median after 3 steps), and the two ways of
sending several tensors over the baseline. See docs/cost-model.md, "2026-12-05: one message
per cut".
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

WIDTH, ROWS, MICROBATCHES = 16, 4, 8
WAYS = ("one tensor", "packed", "one by one")


def _model(tensors: int, floats: int) -> Any:
    import torch
    from torch import nn

    class Gather(nn.Linear):
        """The second stage: sums the first ``WIDTH`` columns of what it receives."""

        def forward(self, *parts: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            total = parts[0].reshape(ROWS, -1)[:, :WIDTH]
            for part in parts[1:]:
                total = total + part.reshape(ROWS, -1)[:, :WIDTH]
            out: torch.Tensor = super().forward(total)
            return out

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first = nn.Linear(WIDTH, WIDTH)
            self.second = Gather(WIDTH, WIDTH)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.tanh(self.first(x)).repeat(1, max(1, floats // (ROWS * WIDTH)))
            out: torch.Tensor = self.second(*[y * (i + 1) for i in range(tensors)])
            return out

    return Tiny()


def _steps(tensors: int, floats: int, pack: bool, steps: int) -> list[float]:
    """This rank's step times, seconds, after the first 3."""
    import torch

    from autopipe.runtime.calibrate import tiny_plan, tiny_spec
    from autopipe.runtime.pipe import build
    from autopipe.runtime.prepare import prepare
    from autopipe.trace import trace

    torch.manual_seed(0)
    spec = tiny_spec(_model(tensors, floats), ROWS, WIDTH)
    example = spec.example_inputs[0]
    graph = trace(spec.model, (example,))
    plan = tiny_plan(graph, MICROBATCHES)  # cut before the second layer: every tensor crosses
    prepared = prepare(spec, plan, 2, graph, pack=pack)
    times = []
    with build(plan, spec, device="cpu", prepared=prepared, pin_malloc=True, pin_cores=True) as pipe:
        for step in range(steps):
            inputs, target = pipe.take(*spec.batch(MICROBATCHES, step))
            t0 = time.perf_counter()
            pipe.step(inputs, target)
            times.append(time.perf_counter() - t0)
    return times[3:]


def rank_main(tensors: int, sizes: list[int], steps: int) -> None:
    """One rank's part (under the launcher); rank 0 prints."""
    rank = int(os.environ["RANK"])
    for floats in sizes:
        rows = []
        for way in WAYS:
            n, pack = (1, True) if way == "one tensor" else (tensors, way == "packed")
            per = floats * tensors // n  # the same bytes in every way
            times = _steps(n, per, pack, steps)
            rows.append((way, sorted(times)[len(times) // 10], statistics.median(times)))
        if rank == 0:
            base = rows[0][2]
            kib = floats * tensors * 4 / 1024
            for way, low, median in rows:
                print(f"{kib:9.1f} KiB  {way:11s} {low * 1e3:8.2f} ms {median * 1e3:8.2f} ms "
                      f"{median / base:8.2f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tensors", type=int, default=4, help="tensors the cut carries (default 4)")
    ap.add_argument("--floats", default="64,16384",
                    help="elements of each tensor, comma-separated sizes (default 64,16384: 256 B and 64 KiB)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rank", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.floats.split(",") if s.strip()]
    if args.tensors < 2 or args.steps < 4 or not sizes or min(sizes) < ROWS * WIDTH:
        ap.error(f"use --tensors 2 or more, --steps 4 or more and sizes of at least {ROWS * WIDTH} floats")
    if args.rank:
        rank_main(args.tensors, sizes, args.steps)
        return 0
    from autopipe.runtime.launch import launch

    print(f"{args.tensors} float tensors at a cut, 2 gloo ranks on their own cores, 1F1B, "
          f"{MICROBATCHES} micro-batches a step, {args.steps - 3} steps timed a way")
    print(f"{'cut':>13s}  {'sent as':11s} {'10th pct':>11s} {'median':>11s} {'/ one tensor':>8s}")
    result = launch([sys.executable, "-m", "benchmarks.bench_cut_messages", "--rank", "--tensors",
                     str(args.tensors), "--floats", args.floats, "--steps", str(args.steps)], 2,
                    env={"OMP_NUM_THREADS": "1"}, timeout_s=600)
    return result.code


if __name__ == "__main__":
    raise SystemExit(main())
