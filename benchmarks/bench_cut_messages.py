"""What a cut of several tensors costs a pipeline step, packed into one message or sent one by one.

    python -m benchmarks.bench_cut_messages [--tensors 4] [--floats 64,16384] [--mixed | --bf16] [--steps 40]

A tiny two-stage model (two 16-wide linear layers, 4 rows a micro-batch) whose first stage
hands its successor ``--tensors`` float tensors of the same shape: ``floats`` elements each
(the first layer's output, repeated; with ``--mixed``, the tensors after the first are in
turn a bool, an int64 and a float without a gradient; with ``--bf16``, bfloat16 tensors with a
gradient, as a bfloat16 model's cut inside a norm carries float32 and bfloat16 values: still
one message each way, [Note: what a cut sends] in ``autopipe.schedule.traffic``). Two gloo
ranks on their own cores train it under 1F1B,
8 micro-batches and an SGD step a step, through ``autopipe.runtime.build`` as ``autopipe train``
runs it, in three ways per size: one tensor of all the bytes (the baseline), the tensors packed into one
message ([Note: one message per cut] in ``autopipe.runtime.packing``, the runtime's default),
and the tensors sent one by one as torch's schedules send them (``prepare(pack=False)``).
Prints each one's step time (10th percentile and median after 3 steps) next to the plan's
predicted step (the simulator's, with the runtime's costs and the stages re-timed here, as
``bench_simulator``: one message a cut each way, as the packed way sends it),
and the two ways of sending
several tensors over the baseline. See docs/cost-model.md, "2026-12-05: one message
per cut".
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

WIDTH, ROWS, MICROBATCHES = 16, 4, 8
WAYS = ("one tensor", "packed", "one by one")


MIXED = ("bool", "int64", "float without a gradient")
"""With ``--mixed``: what the cut's tensors after the first are, in turn (a mask, token ids, a
constant), as a transformer's cut carries its hidden states with a mask and positions."""


def _model(tensors: int, floats: int, mixed: bool | str = False) -> Any:
    import torch
    from torch import nn

    class Gather(nn.Linear):
        """The second stage: sums the first ``WIDTH`` columns of what it receives."""

        def forward(self, *parts: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            total = parts[0].reshape(ROWS, -1)[:, :WIDTH]
            for part in parts[1:]:
                total = total + part.reshape(ROWS, -1)[:, :WIDTH].to(total.dtype)
            out: torch.Tensor = super().forward(total)
            return out

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first = nn.Linear(WIDTH, WIDTH)
            self.second = Gather(WIDTH, WIDTH)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.tanh(self.first(x)).repeat(1, max(1, floats // (ROWS * WIDTH)))
            parts = [y * (i + 1) for i in range(tensors)]
            if mixed == "bf16":
                parts[1:] = [v.to(torch.bfloat16) for v in parts[1:]]
            elif mixed:
                made = {"bool": lambda v: v > 0, "int64": lambda v: (v * 100).long(),
                        "float without a gradient": lambda v: v.detach()}
                parts[1:] = [made[MIXED[(i - 1) % len(MIXED)]](v) for i, v in enumerate(parts[1:], 1)]
            out: torch.Tensor = self.second(*parts)
            return out

    return Tiny()


def _setup(tensors: int, floats: int, mixed: bool | str = False) -> tuple[Any, Any, Any]:
    """The spec, its graph and the two-stage plan cut before the second layer (every tensor
    crosses it), with the cut's sends, as a planner would record them."""
    import dataclasses

    import torch

    from autopipe.plan_format import Send
    from autopipe.runtime.calibrate import tiny_plan, tiny_spec
    from autopipe.trace import trace

    torch.manual_seed(0)
    spec = tiny_spec(_model(tensors, floats, mixed), ROWS, WIDTH)
    graph = trace(spec.model, spec.example_inputs)
    plan = tiny_plan(graph, MICROBATCHES)
    first = set(plan.stages[0].nodes)
    crossing = dict.fromkeys(v for n in graph.nodes if n.name not in first for v in n.inputs if v in first)
    info = graph.by_name
    sends = tuple(Send(tensor=v, bytes=info[v].output_bytes, to_stage=1, no_grad=info[v].no_grad)
                  for v in crossing)
    stages = (dataclasses.replace(plan.stages[0], sends=sends), plan.stages[1])
    return spec, graph, dataclasses.replace(plan, stages=stages)


def _ways(tensors: int, floats: int) -> list[tuple[str, int, int, bool]]:
    """(way, tensors at the cut, elements of each, packed) for the same bytes in each way."""
    return [(way, 1 if way == "one tensor" else tensors, floats * tensors if way == "one tensor" else floats,
             way != "one by one") for way in WAYS]


def _predicted(tensors: int, floats: int, mixed: bool | str, runtime: Any) -> tuple[float, int]:
    """The plan's step as the simulator predicts it: ``runtime``'s costs (measured here), each
    stage re-timed as one module, the loss and an SGD step (as ``bench_simulator``); and the
    bytes its cut carries (its sends)."""
    from autopipe.runtime.calibrate import measure_model_costs
    from autopipe.schedule.simulate import simulate_plan

    spec, graph, plan = _setup(tensors, floats, mixed)
    model = measure_model_costs(spec, graph, plan, optimizer="sgd", idle_s=runtime.send_latency_s)
    return simulate_plan(plan, runtime=runtime, model=model).iteration_s, sum(s.bytes for s in plan.stages[0].sends)


def _steps(tensors: int, floats: int, mixed: bool | str, pack: bool, steps: int) -> list[float]:
    """This rank's training steps (the pipeline's step and an SGD step), seconds, after the first 3."""
    from autopipe.runtime.optim import TrainConfig, make_optimizer
    from autopipe.runtime.pipe import build
    from autopipe.runtime.prepare import prepare

    spec, graph, plan = _setup(tensors, floats, mixed)
    prepared = prepare(spec, plan, 2, graph, pack=pack)
    times = []
    with build(plan, spec, device="cpu", prepared=prepared, pin_malloc=True, pin_cores=True) as pipe:
        optimizer = make_optimizer(pipe.parameters(), TrainConfig(steps=steps, lr=1e-3, optimizer="sgd", device="cpu"))
        assert optimizer is not None
        for step in range(steps):
            inputs, target = pipe.take(*spec.batch(MICROBATCHES, step))
            t0 = time.perf_counter()
            pipe.zero_grad(set_to_none=True)
            pipe.step(inputs, target)
            optimizer.step()
            times.append(time.perf_counter() - t0)
    return times[3:]


def rank_main(tensors: int, sizes: list[int], mixed: bool | str, steps: int, out: str) -> None:
    """One rank's part (under the launcher); rank 0 writes each way's step times to ``out``."""
    rank = int(os.environ["RANK"])
    measured = {f"{floats} {way}": _steps(n, per, mixed if n > 1 else False, pack, steps)
                for floats in sizes for way, n, per, pack in _ways(tensors, floats)}
    if rank == 0:
        Path(out).write_text(json.dumps(measured))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tensors", type=int, default=4, help="tensors the cut carries (default 4)")
    ap.add_argument("--floats", default="64,16384",
                    help="elements of each tensor, comma-separated sizes (default 64,16384: 256 B and 64 KiB)")
    ap.add_argument("--mixed", action="store_true",
                    help="the tensors after the first are, in turn, a bool, an int64 and a float "
                         "without a gradient (the same elements each)")
    ap.add_argument("--bf16", action="store_true",
                    help="the tensors after the first are bfloat16, with a gradient (in the float32 message, as its bytes)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rank", metavar="OUT", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.floats.split(",") if s.strip()]
    if args.mixed and args.bf16:
        ap.error("use --mixed or --bf16, not both")
    mixed: bool | str = "bf16" if args.bf16 else args.mixed
    if args.tensors < 2 or args.steps < 4 or not sizes or min(sizes) < ROWS * WIDTH:
        ap.error(f"use --tensors 2 or more, --steps 4 or more and sizes of at least {ROWS * WIDTH} floats")
    if args.rank:
        rank_main(args.tensors, sizes, mixed, args.steps, args.rank)
        return 0
    from autopipe.runtime.calibrate import measure_runtime_costs
    from autopipe.runtime.launch import launch

    runtime = measure_runtime_costs("sgd")
    # the plan of the same bytes in one tensor or several is one message either way: the
    # packed and the one-by-one runs share the several tensors' prediction
    predicted = {(floats, n): _predicted(n, per, mixed if n > 1 else False, runtime) for floats in sizes
                 for _way, n, per, _pack in _ways(args.tensors, floats)}
    with tempfile.TemporaryDirectory(prefix="autopipe-cut-messages.") as tmp:
        out = Path(tmp, "steps.json")
        result = launch([sys.executable, "-m", "benchmarks.bench_cut_messages", "--rank", str(out), "--tensors",
                         str(args.tensors), "--floats", args.floats, "--steps", str(args.steps),
                         *(["--mixed"] if args.mixed else []), *(["--bf16"] if args.bf16 else [])], 2,
                        env={"OMP_NUM_THREADS": "1"}, timeout_s=600)
        if result.code or not out.exists():
            return result.code or 1
        measured = json.loads(out.read_text())
    what = (f"1 float tensor and {args.tensors - 1} of {', '.join(MIXED)} in turn" if args.mixed
            else f"1 float tensor and {args.tensors - 1} bfloat16 ones" if args.bf16 else "float tensors")
    print(f"{args.tensors} {what} at a cut (the same elements each), 2 gloo ranks on their own cores, 1F1B, "
          f"{MICROBATCHES} micro-batches and an SGD step a step, {args.steps - 3} steps timed a way")
    print(f"{'cut':>13s}  {'sent as':11s} {'predicted':>11s} {'10th pct':>11s} {'median':>11s} "
          f"{'pred/med':>8s} {'/ one tensor':>8s}")
    for floats in sizes:
        base = statistics.median(measured[f"{floats} one tensor"])
        for way, n, _per, _pack in _ways(args.tensors, floats):
            times = sorted(measured[f"{floats} {way}"])
            median, (pred, nbytes) = statistics.median(times), predicted[floats, n]
            print(f"{nbytes / 1024:9.1f} KiB  {way:11s} {pred * 1e3:8.2f} ms "
                  f"{times[len(times) // 10] * 1e3:8.2f} ms {median * 1e3:8.2f} ms {pred / median:8.3f} "
                  f"{median / base:8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
