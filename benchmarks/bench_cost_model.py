"""Is the plan's prediction what training measures? autopipe's plan and the uniform split, as planned by default.

For every example and a tied LM with a 32,768-word head (``examples/tied_lm.py``):
plan 2 stages with ``autopipe.plan`` at its defaults (the model measured here, the
stages refined as whole modules), once with the ILP and once with ``method="uniform"``;
train each plan with Adam on 2 gloo ranks (one thread and one core each, as
``autopipe train`` runs) and print the plan's predicted step against the measured
median and best steps, and autopipe's speedup over the uniform split, predicted and
measured. The two plans train in turns (``--rounds`` runs each, their steps pooled),
so a slow spell of the machine falls on both. No separate calibration runs: what
the planner leaves out of a step shows as predicted / measured below 1.

The host's own noise is printed with each model: a one-thread matmul (128 × 128 by
128 × 32,768) timed back to back for 2 s before it plans, its median and its 90th
percentile over the median; each row's median step over its best; and the host's drift
between planning and training: the same matmul's median for 1 s just before each training
run of the plan, over its median just before the plan was made (``host train/plan``
above 1: the machine ran slower while it trained than while it was measured for the
plan). A row whose median sits far over its best step measured the machine, not the
plan. The drift is a record, not a correction: a 1 s sample before a run of several
seconds misses a host whose speed changes within seconds, and in the runs of
2026-12-01 it did not follow predicted / measured (docs/cost-model.md).

Each plan runs 8 micro-batches a step (``--microbatches``; 4 × the stages, the usual
advice for 1F1B, whose fill and drain then take 1 of 9 slots). With 4, they take 1 of 5
and bound what any split of the tied LM can gain over another: its best plan predicts
1.13–1.18 × the uniform split's steps/s at 4 micro-batches, 1.16–1.20 × at 8
(docs/cost-model.md, 2026-12-04).

It ends with its verdict (``verdict``): how many rows read predicted / median within
0.85–1.15, how many measured speedups sit within 10% of the predicted ones, whether the
tied LM's autopipe plan measured at least 1.15 × the uniform split; each miss named, with
its row's median over its best ("noisy" over 1.15).

    python -m benchmarks.bench_cost_model [--only mlp,tied_lm] [--microbatches 8]
        [--min-seconds 3] [--quiet-wait 30] [--rounds 2]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import autopipe
from autopipe.spec import example_target
from benchmarks.bench_simulator import EXAMPLES, MAX_STEPS, SKIP_STEPS, _spec_path, _train

MODELS = [*EXAMPLES, "tied_lm"]
METHODS = ("ilp", "uniform")
HOST_CHECK_S = 1.0
"""Seconds of the reference matmul before each plan is made and before each training run."""


def host_noise(seconds: float = 2.0) -> tuple[float, float]:
    """(median seconds, 90th percentile / median) of a one-thread 128 × 128 by 128 × 32,768
    matmul run back to back for ``seconds``: how steady the machine is right now."""
    a, b = torch.randn(128, 128), torch.randn(128, 32768)
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t)
    times.sort()
    median = statistics.median(times)
    return median, times[int(0.9 * (len(times) - 1))] / median


def bench(name: str, microbatches: int, min_seconds: float, tmp: Path, quiet_wait_s: float,
          rounds: int) -> dict[str, tuple[float, float, float, float]]:
    """Per method: (predicted, measured median, measured best) seconds per step, and the
    host's drift: the reference matmul's median (``host_noise``) just before its training
    runs over the same just before it was planned (above 1: the host was slower training).

    Both plans are made first; then each trains ``rounds`` times, the two plans taking turns
    (ilp, uniform, ilp, ...), so a slow spell of the machine falls on both; a plan's median
    and best are over the steps of all its runs."""
    spec = autopipe.load_spec(_spec_path(name))
    commands: dict[str, tuple[float, list[str], Path]] = {}
    host_at_plan: dict[str, float] = {}
    host_at_train: dict[str, list[float]] = {method: [] for method in METHODS}
    for method in METHODS:
        host_at_plan[method] = host_noise(HOST_CHECK_S)[0]
        # as `autopipe plan` does: the spec's loss on one micro-batch's target is a cost
        plan = autopipe.plan(spec.model, spec.example_inputs, example_kwargs=spec.example_kwargs,
                             num_stages=2, microbatches=microbatches, method=method, profile="measure",
                             loss_fn=spec.loss_fn, target=example_target(spec))
        predicted = plan.predicted.iteration_s
        refined = plan.options.get("refine", {})
        print(f"  {name} {method}: nodes per stage {[len(s.nodes) for s in plan.stages]}, predicted "
              f"{predicted * 1e3:.2f} ms, refine rounds {len(refined.get('rounds', []))}"
              f"{'' if refined.get('converged', True) else ' (cuts still moving)'}", flush=True)
        steps = max(16, min(MAX_STEPS, SKIP_STEPS + math.ceil(min_seconds / predicted)))
        folder = Path(tempfile.mkdtemp(prefix=f"{name}-{method}.", dir=tmp))
        plan.save(folder / "plan.json")
        commands[method] = (predicted, [sys.executable, "-m", "benchmarks.bench_simulator", "--worker",
                                        _spec_path(name), str(folder / "plan.json"), str(folder), str(steps),
                                        "malloc+cores"], folder)
    timed: dict[str, list[float]] = {method: [] for method in METHODS}
    for _ in range(max(1, rounds)):
        for method, (_, cmd, folder) in commands.items():
            host_at_train[method].append(host_noise(HOST_CHECK_S)[0])
            timed[method].extend(_train(f"{name} {method}", cmd, folder, quiet_wait_s).steps)
    return {method: (predicted, statistics.median(timed[method]), min(timed[method]),
                     statistics.median(host_at_train[method]) / host_at_plan[method])
            for method, (predicted, _, _) in commands.items()}


BAND = (0.85, 1.15)
"""Predicted / median step a plan should read."""
SPEEDUP_TOLERANCE = 0.10
"""How far the measured speedup may sit from the predicted one, as a share of the predicted."""
TIED_LM_SPEEDUP = 1.15
"""What the autopipe plan of the tied LM should measure over the uniform split, steps/s."""
NOISY = 1.15
"""A row whose median step is over its best by more than this measured the machine as much as the plan."""

Row = tuple[float, float, float, float]
"""Predicted, median and best step, seconds, and the host's drift (``bench``)."""


def speedups_of(rows: dict[str, dict[str, Row]]) -> dict[str, tuple[float, float]]:
    """Per model with both plans: autopipe's steps/s over the uniform split's, predicted and measured."""
    return {name: (r["uniform"][0] / r["ilp"][0], r["uniform"][1] / r["ilp"][1])
            for name, r in rows.items() if {"ilp", "uniform"} <= set(r)}


def verdict(rows: dict[str, dict[str, Row]]) -> list[str]:
    """The table against its targets: rows in ``BAND``, speedups within ``SPEEDUP_TOLERANCE``
    and the tied LM's speedup; each miss named, with its row's median over its best."""
    ratios = {(name, method): (pred / med, med / best)
              for name, r in rows.items() for method, (pred, med, best, _) in r.items()}
    out_band = {k: v for k, v in ratios.items() if not BAND[0] <= v[0] <= BAND[1]}
    lines = [f"rows with predicted / median in {BAND[0]:.2f}-{BAND[1]:.2f}: {len(ratios) - len(out_band)} of "
             f"{len(ratios)}"]
    lines += [f"  out: {name} {method} {ratio:.3f}, its median {spread:.2f} x its best"
              f"{' (noisy)' if spread > NOISY else ''}" for (name, method), (ratio, spread) in out_band.items()]
    speedups = speedups_of(rows)
    off = {name: s for name, s in speedups.items() if abs(s[1] / s[0] - 1) > SPEEDUP_TOLERANCE}
    lines.append(f"speedups within {SPEEDUP_TOLERANCE:.0%} of the predicted: {len(speedups) - len(off)} of "
                 f"{len(speedups)}")
    lines += [f"  out: {name} measured {m:.3f} against {p:.3f}" for name, (p, m) in off.items()]
    if "tied_lm" in speedups:
        measured = speedups["tied_lm"][1]
        lines.append(f"tied LM, autopipe over uniform: {measured:.3f} x measured "
                     f"({'at least' if measured >= TIED_LM_SPEEDUP else 'under'} {TIED_LM_SPEEDUP})")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run it and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--only", default=",".join(MODELS))
    ap.add_argument("--microbatches", type=int, default=8)
    ap.add_argument("--min-seconds", type=float, default=3.0)
    ap.add_argument("--quiet-wait", type=float, default=30.0, metavar="SECONDS")
    ap.add_argument("--rounds", type=int, default=2,
                    help="training runs of each plan, the two plans taking turns")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(f"2 stages, 1f1b, {args.microbatches} micro-batches, Adam, 2 gloo ranks on CPU; plans by "
          f"autopipe.plan's defaults (measured here, stages refined); steps after the first {SKIP_STEPS}, "
          f"{args.rounds} run(s) of each plan in turns")
    print(f"{'model':8s} {'plan':8s} {'predicted':>10s} {'median':>10s} {'best':>10s} {'pred/med':>8s} "
          f"{'med/best':>8s} {'host train/plan':>15s}")
    rows: dict[str, dict[str, Row]] = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_cost_model.") as d:
        for name in [n for n in args.only.split(",") if n]:
            median, tail = host_noise()
            print(f"  host: reference matmul {median * 1e3:.2f} ms median, 90th percentile "
                  f"{tail:.2f} × the median", flush=True)
            rows[name] = bench(name, args.microbatches, args.min_seconds, Path(d), args.quiet_wait,
                               args.rounds)
            for method, (pred, med, best, drift) in rows[name].items():
                print(f"{name:8s} {method:8s} {pred * 1e3:8.2f}ms {med * 1e3:8.2f}ms {best * 1e3:8.2f}ms "
                      f"{pred / med:8.3f} {med / best:8.3f} {drift:15.2f}", flush=True)
    print(f"\nautopipe (ilp) over uniform, steps/s:\n{'model':8s} {'predicted':>9s} {'measured':>9s}")
    for name, (predicted, measured) in speedups_of(rows).items():
        print(f"{name:8s} {predicted:9.3f} {measured:9.3f}")
    print("\n" + "\n".join(verdict(rows)))
    print(f"\n({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
