"""How good is the simulator? Predicted step time against measured pipeline training on CPU.

First measure the runtime's fixed costs on this machine (autopipe.runtime.calibrate:
per-action stage overhead, send latency and bandwidth, the optimizer step). Then, for
every example: profile it here (1 thread), plan it for 2 stages, measure the loss,
each stage re-timed as one module and each stage's optimizer step, simulate the
plan's step with those extras, then train the
plan with 2 gloo ranks on this machine (1 thread each) and time the steps. Prints the
plan's own prediction (profiled compute only), the full prediction, the measured step
and predicted / measured (target: within 15%), then how long one ``simulate()`` call
takes at planner sizes.

    python -m benchmarks.bench_simulator [--only mlp,gpt2] [--steps 16] [--min-seconds 3]
        [--microbatches 4] [--rounds 3] [--no-pin-malloc] [--no-pin-cores] [--quiet-wait 120]
        [--attempts 3]

A measured step is the slowest rank's wall time of one step (zero_grad, the
schedule, gradient averaging, the optimizer step). Both the fastest ("best")
and the median of the steps after the first two are printed; the target is
checked on the best step, because on a shared machine other processes only
ever add time (the calibration likewise takes low percentiles). A run trains
at least ``--steps`` steps and at least ``--min-seconds`` of predicted steps
(so the MLP's 6 ms steps get as many chances at an undisturbed step as the
larger models' 50–100 ms ones); "steps" says how many. "cores" is
the ranks' CPU time over wall time: near 2 × (1 − bubble) when the two ranks
had the two cores to themselves. Everything, calibration included, runs
``--rounds`` times; the target is checked on each example's median ratio.

The ranks pin glibc's malloc thresholds, as ``autopipe train`` does on CPU
(autopipe._malloc), and so does this process, where the profile and the
model costs are measured; ``--no-pin-malloc`` runs both with glibc's defaults.
The ranks also keep to a core each, as ``autopipe train`` does on CPU
(autopipe.runtime.affinity); ``--no-pin-cores`` lets them share both (the
calibration ranks stay pinned: their figures are CPU time).
Before each training run the benchmark waits (up to ``--quiet-wait`` seconds)
until other processes use less than a tenth of a core, and prints what they
used ("busy", in cores, over the second before the ranks started) and, from
/proc/stat less the ranks' own CPU time, while the ranks ran ("others"). A run
with "others" at 0.1 cores or more measured a machine the ranks did not have to
themselves; it is repeated (``--attempts``), and the quietest run counts ("runs"
says how many it took).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch

import autopipe
from autopipe.plan_format import Plan
from autopipe.profile import measure
from autopipe.runtime.calibrate import measure_model_costs, measure_runtime_costs
from autopipe.schedule import SCHEDULES, StageCost, simulate, simulate_plan
from autopipe.schedule.actions import V_SHAPED
from autopipe.schedule.runtime_costs import RuntimeCosts

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ["mlp", "gpt2", "llama", "resnet", "unet", "bert"]
TARGET = 0.15
QUIET = 0.1
"""Cores other processes may use during a training run for it to count as quiet."""
SKIP_STEPS = 2
MAX_STEPS = 1000


def _spec_path(name: str) -> str:
    return f"{ROOT / 'examples' / name}.py:build"


def worker(spec_path: str, plan_path: str, out: str, steps: int, pins: str) -> int:
    """One rank: train the plan and write its step times (run by ``bench_example`` under the launcher)."""
    import torch.distributed as dist

    from autopipe.runtime.optim import TrainConfig
    from autopipe.runtime.train import prepare, train

    torch.set_num_threads(1)
    spec = autopipe.load_spec(spec_path)
    plan = Plan.load(plan_path)
    prepared = prepare(spec, plan, int(os.environ["WORLD_SIZE"]))
    t0, ticks0, cpu = time.perf_counter(), _cpu_ticks(), time.process_time()
    pinned = pins.split("+")
    config = TrainConfig(steps=steps, optimizer="adam", timeout_s=120, pin_malloc="malloc" in pinned,
                         pin_cores="cores" in pinned)
    result = train(spec, plan, config,
                   prepared=prepared, log=lambda _line: None)
    cpu, ticks1, wall = time.process_time() - cpu, _cpu_ticks(), time.perf_counter() - t0
    rank = dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))
    machine = ticks1[0] - ticks0[0] if ticks0 and ticks1 else float("nan")
    Path(out, f"rank{rank}.json").write_text(json.dumps({"step_s": result.step_s, "cpu_s": cpu,
                                                         "train_s": wall, "machine_busy_s": machine}))
    return 0


@dataclass(frozen=True)
class Row:
    """One example's figures, seconds per step."""

    compute_only: float
    """The plan's own prediction: profiled compute only."""
    predicted: float
    """With the runtime's and the model's extras."""
    best: float
    """Fastest measured step (slowest rank) after the first two."""
    median: float
    """Median measured step after the first two."""
    cores: float
    """The ranks' CPU seconds over wall seconds while training (2 at most)."""
    scale: float
    """``ModelCosts.compute_scale``: whole model over the sum of its profiled nodes."""
    loss: float
    """Loss forward + backward per micro-batch."""
    busy: float
    """Cores other processes used in the second before the ranks started."""
    others: float
    """Cores other processes used while the ranks trained (all busy time but the ranks' own)."""
    attempts: int
    """Training runs it took to get a quiet one (or all that were allowed)."""
    steps: int
    """Steps each training run took (the first ``SKIP_STEPS`` not timed)."""


def _cpu_ticks() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine so far, summed over cores (Linux)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields) - idle) / tick, sum(fields) / tick


def busy_cores(seconds: float = 1.0) -> float:
    """Cores busy on this machine over the next ``seconds`` (from /proc/stat; load average elsewhere)."""
    a = _cpu_ticks()
    time.sleep(seconds)
    b = _cpu_ticks()
    if a is None or b is None or b[1] == a[1]:
        return os.getloadavg()[0]
    return (b[0] - a[0]) / (b[1] - a[1]) * (os.cpu_count() or 1)


def wait_for_quiet(max_wait_s: float, threshold: float = QUIET) -> float:
    """Wait until other processes use under ``threshold`` cores (at most ``max_wait_s``); the last figure."""
    deadline = time.monotonic() + max_wait_s
    busy = busy_cores()
    while busy >= threshold and time.monotonic() < deadline:
        time.sleep(2.0)
        busy = busy_cores()
    return busy


def bench_example(name: str, microbatches: int, steps: int, min_seconds: float, tmp: Path,
                  runtime: RuntimeCosts, pins: str, quiet_wait_s: float, attempts: int) -> Row:
    """Plan, simulate and train one example (``pins``: what the ranks pin, ``malloc+cores``,
    either, or ``none``).

    Training runs ``steps`` steps, or more where those would take under
    ``min_seconds`` as predicted (at most ``MAX_STEPS``).

    Training runs up to ``attempts`` times, until other processes used under
    ``QUIET`` cores during a run; the quietest run counts.
    """
    spec = autopipe.load_spec(_spec_path(name))
    graph = autopipe.trace(spec.model, spec.example_inputs, spec.example_kwargs)
    profile = measure(graph, spec.example_inputs, spec.example_kwargs, progress=False)
    plan = autopipe.plan(spec.model, spec.example_inputs, example_kwargs=spec.example_kwargs,
                         num_stages=2, microbatches=microbatches, schedule="1f1b", profile=profile)
    compute_only = simulate_plan(plan).iteration_s
    # each action timed after blocking one send latency, as a rank waits for its peer
    model = measure_model_costs(spec, graph, plan, profile, optimizer="adam", idle_s=runtime.send_latency_s)
    predicted = simulate_plan(plan, runtime=runtime, model=model).iteration_s
    steps = max(steps, min(MAX_STEPS, SKIP_STEPS + math.ceil(min_seconds / predicted)))
    out = Path(tempfile.mkdtemp(prefix=f"{name}.", dir=tmp))
    plan_path = out / "plan.json"
    plan.save(plan_path)
    cmd = [sys.executable, "-m", "benchmarks.bench_simulator", "--worker", _spec_path(name),
           str(plan_path), str(out), str(steps), pins]
    runs = []
    for _ in range(attempts):
        runs.append(_train(name, cmd, out, quiet_wait_s))
        if not runs[-1].others >= QUIET:  # quiet, or no /proc/stat to tell
            break
    run = min(runs, key=lambda r: r.others)
    return Row(compute_only=compute_only, predicted=predicted, best=run.best, median=run.median,
               cores=run.cores, scale=model.compute_scale, loss=model.loss_forward_s + model.loss_backward_s,
               busy=run.busy, others=run.others, attempts=len(runs), steps=steps)


@dataclass(frozen=True)
class _Run:
    """One training run: its best and median step, cores used, and what others used (see ``Row``)."""

    best: float
    median: float
    cores: float
    busy: float
    others: float
    steps: tuple[float, ...] = ()
    """Every timed step (the slowest rank's), in order."""


def _train(name: str, cmd: list[str], out: Path, quiet_wait_s: float) -> _Run:
    """One training run of the ranks, with what other processes used around and during it."""
    from autopipe.runtime.launch import launch

    busy = wait_for_quiet(quiet_wait_s)
    result = launch(cmd, 2, env={"OMP_NUM_THREADS": "1"}, timeout_s=600)
    if result.code:
        raise RuntimeError(f"{name}: training failed (exit codes {list(result.codes)})")
    per_rank = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    # rank 0's window; the ranks train in lockstep, so their windows nearly coincide
    window = per_rank[0]["train_s"]
    ranks_cpu = sum(r["cpu_s"] * window / r["train_s"] for r in per_rank)
    others = max(0.0, per_rank[0]["machine_busy_s"] - ranks_cpu) / window
    slowest = [max(ts) for ts in zip(*(r["step_s"] for r in per_rank))]
    timed = slowest[SKIP_STEPS:] or slowest
    return _Run(best=min(timed), median=statistics.median(timed),
                cores=sum(r["cpu_s"] for r in per_rank) / sum(slowest), busy=busy, others=others,
                steps=tuple(timed))


def bench_examples(names: list[str], microbatches: int, steps: int, min_seconds: float, rounds: int,
                   pins: str, quiet_wait_s: float, attempts: int) -> bool:
    """Print predicted vs measured per example and round, then the median ratio over rounds.

    Returns:
        Whether every example's median best-step ratio is within the target.
    """
    print(f"simulated vs measured step, 2 stages, 1f1b, {microbatches} micro-batches, 2 gloo ranks "
          f"on CPU (1 thread each), at least {steps} steps and {min_seconds:g} s of predicted steps "
          f"(the first {SKIP_STEPS} not timed), {rounds} round(s)")
    ratios: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory(prefix="bench_simulator.") as d:
        for k in range(rounds):
            t0 = time.perf_counter()
            runtime = measure_runtime_costs("adam")
            print(f"\nround {k + 1}: runtime costs (measured in {time.perf_counter() - t0:.1f} s): "
                  f"per action forward {runtime.forward_overhead_s * 1e6:.0f} µs, backward "
                  f"{runtime.backward_overhead_s * 1e6:.0f} µs, per step {runtime.step_overhead_s * 1e6:.0f} µs; send latency "
                  f"{runtime.send_latency_s * 1e6:.0f} µs, bandwidth {runtime.link_bandwidth / 1e9:.2f} GB/s; "
                  f"adam {runtime.optimizer_tensor_s * 1e6:.1f} µs/tensor + "
                  f"{runtime.optimizer_element_s * 1e9:.2f} ns/element")
            print(f"{'model':8s} {'scale':>5s} {'loss':>7s} {'compute only':>12s} {'predicted':>10s} "
                  f"{'best step':>10s} {'ratio':>6s} {'median step':>11s} {'ratio':>6s} {'cores':>5s} "
                  f"{'busy':>5s} {'others':>6s} {'runs':>4s} {'steps':>5s}")
            for name in names:
                r = bench_example(name, microbatches, steps, min_seconds, Path(d), runtime, pins,
                                  quiet_wait_s, attempts)
                ratios[name].append((r.predicted / r.best, r.predicted / r.median))
                print(f"{name:8s} {r.scale:5.2f} {r.loss * 1e3:5.2f}ms {r.compute_only * 1e3:10.2f}ms "
                      f"{r.predicted * 1e3:8.2f}ms {r.best * 1e3:8.2f}ms {r.predicted / r.best:6.3f} "
                      f"{r.median * 1e3:9.2f}ms {r.predicted / r.median:6.3f} {r.cores:5.2f} "
                      f"{r.busy:5.2f} {r.others:6.2f} {r.attempts:4d} {r.steps:5d}", flush=True)
    print(f"\npredicted / measured, median over rounds [min–max]:\n{'model':8s} {'best step':>22s} "
          f"{'median step':>22s}")
    ok = True
    for name, pairs in ratios.items():
        best, median = sorted(p[0] for p in pairs), sorted(p[1] for p in pairs)
        mid = statistics.median(best)
        ok &= abs(mid - 1) <= TARGET
        print(f"{name:8s} {f'{mid:.3f} [{best[0]:.3f}–{best[-1]:.3f}]':>22s} "
              f"{f'{statistics.median(median):.3f} [{median[0]:.3f}–{median[-1]:.3f}]':>22s}")
    return ok


def bench_speed(repeats: int = 50) -> None:
    """Time one simulate() call per schedule at a planner-sized pipeline (8 stages, 32 micro-batches)."""
    cost = StageCost(forward_s=1.0, backward_input_s=1.0, backward_weight_s=1.0, send_s=0.1,
                     activation_bytes=1)
    print("\nsimulate() wall time, 8 stages × 32 micro-batches (orders cached after the first call):")
    for schedule in SCHEDULES:
        v = 2 if schedule == "interleaved-1f1b" or schedule in V_SHAPED else 1
        stages = [cost] * (8 * v)
        simulate(stages, schedule=schedule, microbatches=32, virtual_stages=v)
        t0 = time.perf_counter()
        for _ in range(repeats):
            simulate(stages, schedule=schedule, microbatches=32, virtual_stages=v)
        print(f"  {schedule:17s} {(time.perf_counter() - t0) / repeats * 1e3:6.2f} ms")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit 1 when a ratio is off target."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return worker(argv[1], argv[2], argv[3], int(argv[4]), argv[5])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--only", default=",".join(EXAMPLES), help="comma-separated examples")
    ap.add_argument("--microbatches", type=int, default=4)
    ap.add_argument("--steps", type=int, default=16, help="least steps per training run (default 16)")
    ap.add_argument("--min-seconds", type=float, default=3.0, metavar="SECONDS",
                    help="train at least this long per run, in predicted steps (default 3; "
                         f"at most {MAX_STEPS} steps)")
    ap.add_argument("--rounds", type=int, default=3, help="repeat everything, calibration included")
    ap.add_argument("--no-pin-malloc", action="store_true",
                    help="keep glibc's default mmap and trim thresholds here and in the ranks "
                         "(autopipe train pins them on CPU; see autopipe._malloc)")
    ap.add_argument("--no-pin-cores", action="store_true",
                    help="let the training ranks share the cores (autopipe train gives each "
                         "its own on CPU; see autopipe.runtime.affinity)")
    ap.add_argument("--quiet-wait", type=float, default=120.0, metavar="SECONDS",
                    help="before each training run, wait up to this long for other processes "
                         "to leave the cores (default 120)")
    ap.add_argument("--attempts", type=int, default=3,
                    help="train up to this many times per example until other processes stay "
                         f"under {QUIET} cores during a run (default 3; the quietest run counts)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    pin = not args.no_pin_malloc
    pins = "+".join(what for what, off in (("malloc", args.no_pin_malloc), ("cores", args.no_pin_cores))
                    if not off) or "none"
    if pin:
        from autopipe._malloc import pin_malloc

        print(f"glibc malloc thresholds pinned here: {pin_malloc()}")
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"warning: load average {load:.2f}; other processes share the cores, so the measured "
              f"steps will be slower than predicted (see 'cores' and 'busy')")
    ok = bench_examples([n for n in args.only.split(",") if n], args.microbatches, args.steps,
                        args.min_seconds, args.rounds, pins, args.quiet_wait, args.attempts)
    bench_speed()
    print(f"\nall within {TARGET:.0%}" if ok else f"\nOFF TARGET (more than {TARGET:.0%} off)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
