"""Interleaved 1F1B planned by the ILP against the planned 1F1B plan, on CPU profiles.

For every example with a committed CPU profile (``profiles/cpu/*.json``, measured on one
thread, runtime costs included), plan it for p = 2 ranks with 1F1B and with interleaved
1F1B at V = 2 chunks per rank ([Note: chunks] in ``autopipe.partition.chunks``), with
ZBV (2 chunks per rank in a V, zero bubble) and with DualPipeV (the same V, overlapped
forward and backward pairs, [Note: DualPipeV]; only where m ≥ 2p, as torch requires),
at m = 2 micro-batches (the bubble dominates) and m = 8, and print the predicted steps (each the ILP's objective; the simulator on the
plan alone gives the same, checked here).
Then train one example both ways on 2 gloo ranks (1 thread each, the ranks of
``benchmarks.bench_simulator``) and print the predicted step next to the measured one.

    python -m benchmarks.bench_interleaved [--only mlp,gpt2] [--microbatches 2,8]
        [--train gpt2 | --train none] [--steps 30] [--time-limit 60]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

from autopipe.partition.planner import plan_profile
from autopipe.plan_format import Plan
from autopipe.profile.profile import Profile
from autopipe.schedule import simulate_plan

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ["mlp", "gpt2", "llama", "resnet", "unet", "bert"]
"""As ``benchmarks.bench_simulator``: the examples with a committed CPU profile."""
SCHEDULES = (("1f1b", 1), ("interleaved-1f1b", 2), ("zbv", 2), ("dualpipev", 2))
RANKS = 2
COMPARED = ("zbv", "dualpipev")
"""Planned and printed, not trained."""


def plan_both(profile: Profile, m: int, time_limit: float) -> dict[str, tuple[Plan, float]]:
    """The 1F1B, interleaved, ZBV and DualPipeV (where m ≥ 2p) plans of ``profile`` for 2
    ranks and ``m`` micro-batches, each with its planning seconds."""
    out = {}
    for schedule, v in SCHEDULES:
        if schedule == "dualpipev" and m < 2 * RANKS:
            continue
        t0 = time.perf_counter()
        plan = plan_profile(profile, num_stages=RANKS, microbatches=m, schedule=schedule,
                            virtual_stages=v if v > 1 else None, time_limit=time_limit)
        out[schedule] = (plan, time.perf_counter() - t0)
        simulated = simulate_plan(plan).iteration_s
        assert math.isclose(simulated, plan.predicted.iteration_s, rel_tol=1e-9), (schedule, m)
    return out


def table(names: list[str], counts: list[int], time_limit: float) -> dict[tuple[str, int], dict[str, Plan]]:
    """Print the predicted-step table; return the plans."""
    print("predicted step, p = 2 ranks, planned 1F1B vs planned interleaved 1F1B (V = 2, 4 chunks) "
          "and ZBV and DualPipeV (4 chunks in a V; DualPipeV needs m >= 4), CPU profiles "
          "(profiles/cpu); gap and plan seconds of the interleaved and DualPipeV plans")
    head = (f"{'model':7s} {'m':>2s} {'1f1b':>10s} {'bubble':>6s} {'interleaved':>11s} {'bubble':>6s} "
            f"{'ratio':>6s} {'gap':>6s} {'plan s':>7s} {'zbv':>10s} {'ratio':>6s} {'dualpipev':>10s} "
            f"{'bubble':>6s} {'ratio':>6s} {'gap':>6s} {'plan s':>7s}")
    print(head)
    plans: dict[tuple[str, int], dict[str, Plan]] = {}
    for name in names:
        profile = Profile.load(ROOT / "profiles" / "cpu" / f"{name}.json")
        for m in counts:
            both = plan_both(profile, m, time_limit)
            one, inter, vee = both["1f1b"][0], both["interleaved-1f1b"][0], both["zbv"][0]
            plans[name, m] = {k: v[0] for k, v in both.items() if k not in COMPARED}
            ratio = inter.predicted.iteration_s / one.predicted.iteration_s
            dual = "-"  # torch runs DualPipeV only with m >= 2p
            if "dualpipev" in both:
                d, seconds = both["dualpipev"]
                dual = (f"{d.predicted.iteration_s * 1e3:8.3f}ms {d.predicted.bubble_fraction:6.1%} "
                        f"{d.predicted.iteration_s / one.predicted.iteration_s:6.3f} {d.solver.gap:6.2%} "
                        f"{seconds:7.1f}")
            print(f"{name:7s} {m:2d} {one.predicted.iteration_s * 1e3:8.3f}ms "
                  f"{one.predicted.bubble_fraction:6.1%} {inter.predicted.iteration_s * 1e3:9.3f}ms "
                  f"{inter.predicted.bubble_fraction:6.1%} {ratio:6.3f} {inter.solver.gap:6.2%} "
                  f"{both['interleaved-1f1b'][1]:7.1f} {vee.predicted.iteration_s * 1e3:8.3f}ms "
                  f"{vee.predicted.iteration_s / one.predicted.iteration_s:6.3f} {dual:>10s}", flush=True)
    return plans


def train_both(name: str, plans: dict[str, Plan], steps: int) -> None:
    """Train each plan on 2 gloo ranks; print predicted next to the measured step."""
    from benchmarks.bench_simulator import _spec_path, _train

    print(f"\n{name}: predicted vs measured step on 2 gloo ranks (1 thread each, {steps} steps, "
          f"the first 2 not timed)")
    print(f"{'schedule':17s} {'m':>2s} {'predicted':>10s} {'best':>10s} {'median':>10s} {'pred/best':>9s} "
          f"{'others':>6s}")
    with tempfile.TemporaryDirectory(prefix="bench_interleaved.") as d:
        for schedule, plan in plans.items():
            out = Path(tempfile.mkdtemp(prefix=f"{schedule}.", dir=d))
            plan.save(out / "plan.json")
            cmd = [sys.executable, "-m", "benchmarks.bench_simulator", "--worker", _spec_path(name),
                   str(out / "plan.json"), str(out), str(steps), "malloc+cores"]
            run = _train(name, cmd, out, quiet_wait_s=30.0)
            pred = plan.predicted.iteration_s
            print(f"{schedule:17s} {plan.microbatches:2d} {pred * 1e3:8.3f}ms {run.best * 1e3:8.3f}ms "
                  f"{run.median * 1e3:8.3f}ms {pred / run.best:9.3f} {run.others:6.2f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", help="comma-separated examples (default: all with a CPU profile)")
    ap.add_argument("--microbatches", default="2,8", help="comma-separated micro-batch counts")
    ap.add_argument("--train", default="gpt2", help="example to train both ways at the first count, or none")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--time-limit", type=float, default=60.0, help="MIP seconds per plan")
    args = ap.parse_args(argv)
    names = args.only.split(",") if args.only else EXAMPLES
    counts = [int(x) for x in args.microbatches.split(",")]
    t0 = time.perf_counter()
    plans = table(names, counts, args.time_limit)
    print(f"(planned in {time.perf_counter() - t0:.0f} s)")
    if args.train != "none":
        key = (args.train, counts[0])
        if key not in plans:
            profile = Profile.load(ROOT / "profiles" / "cpu" / f"{args.train}.json")
            plans[key] = {k: v[0] for k, v in plan_both(profile, counts[0], args.time_limit).items()
                          if k not in COMPARED}
        train_both(args.train, plans[key], args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
