"""How good is the simulator? Predicted step time against measured pipeline training on CPU.

First measure the runtime's fixed costs on this machine (autopipe.schedule.calibrate:
per-action stage overhead, send latency and bandwidth, the optimizer step). Then, for
every example: profile it here (1 thread), plan it for 2 stages, measure the loss and
each stage's parameters, simulate the plan's step with those extras, then train the
plan with 2 gloo ranks on this machine (1 thread each) and time the steps. Prints the
plan's own prediction (profiled compute only), the full prediction, the measured step
and predicted / measured (target: within 15%), then how long one ``simulate()`` call
takes at planner sizes.

    python -m benchmarks.bench_simulator [--only mlp,gpt2] [--steps 12] [--microbatches 4]

The measured step is the slowest rank's wall time of one step (zero_grad,
the schedule, gradient averaging, the optimizer step), median over the steps
after the first two. The machine should be otherwise idle: two ranks on two
cores leave nothing to spare.
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

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch

import autopipe
from autopipe.plan_format import Plan
from autopipe.schedule import SCHEDULES, StageCost, simulate, simulate_plan
from autopipe.schedule.calibrate import measure_model_costs, measure_runtime_costs
from autopipe.schedule.runtime_costs import RuntimeCosts

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ["mlp", "gpt2", "llama", "resnet", "unet", "bert"]
TARGET = 0.15
SKIP_STEPS = 2


def _spec_path(name: str) -> str:
    return f"{ROOT / 'examples' / name}.py:build"


def worker(spec_path: str, plan_path: str, out: str, steps: int) -> int:
    """One rank: train the plan and write its step times (run by ``bench_example`` under the launcher)."""
    import torch.distributed as dist

    from autopipe.runtime.optim import TrainConfig
    from autopipe.runtime.train import train

    torch.set_num_threads(1)
    spec = autopipe.load_spec(spec_path)
    plan = Plan.load(plan_path)
    cpu = time.process_time()
    result = train(spec, plan, TrainConfig(steps=steps, optimizer="adam", timeout_s=120),
                   log=lambda _line: None)
    cpu = time.process_time() - cpu
    rank = dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))
    Path(out, f"rank{rank}.json").write_text(json.dumps({"step_s": result.step_s, "cpu_s": cpu}))
    return 0


def bench_example(name: str, microbatches: int, steps: int, tmp: Path,
                  runtime: RuntimeCosts) -> tuple[float, float, float, float]:
    """Plan, simulate and train one example.

    Returns:
        Seconds per step: the plan's own prediction (profiled compute only), the
        prediction with the runtime's and the model's extras, the measured step,
        and the ranks' CPU seconds per step over wall seconds per step (near
        2 × (1 − bubble) on an idle machine; lower means the ranks waited for a core).
    """
    from autopipe.runtime.launch import launch

    spec = autopipe.load_spec(_spec_path(name))
    graph = autopipe.trace(spec.model, spec.example_inputs, spec.example_kwargs)
    plan = autopipe.plan(spec.model, spec.example_inputs, example_kwargs=spec.example_kwargs,
                         num_stages=2, microbatches=microbatches, schedule="1f1b", profile="measure")
    compute_only = simulate_plan(plan).iteration_s
    model = measure_model_costs(spec, graph, plan)
    predicted = simulate_plan(plan, runtime=runtime, model=model).iteration_s
    plan_path = tmp / f"{name}.json"
    plan.save(plan_path)
    out = tmp / name
    out.mkdir()
    cmd = [sys.executable, "-m", "benchmarks.bench_simulator", "--worker", _spec_path(name),
           str(plan_path), str(out), str(steps)]
    result = launch(cmd, 2, env={"OMP_NUM_THREADS": "1"}, timeout_s=600)
    if result.code:
        raise RuntimeError(f"{name}: training failed (exit codes {list(result.codes)})")
    per_rank = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    slowest = [max(ts) for ts in zip(*(r["step_s"] for r in per_rank))]
    wall = sum(slowest)
    cpu_share = sum(r["cpu_s"] for r in per_rank) / wall if wall > 0 else 0.0
    return compute_only, predicted, statistics.median(slowest[SKIP_STEPS:] or slowest), cpu_share


def bench_examples(names: list[str], microbatches: int, steps: int) -> bool:
    """Print predicted vs measured per example; True when every ratio is within the target."""
    print(f"simulated vs measured step, 2 stages, 1f1b, {microbatches} micro-batches, 2 gloo ranks "
          f"on CPU (1 thread each), median of {steps - SKIP_STEPS} steps")
    t0 = time.perf_counter()
    runtime = measure_runtime_costs("adam")
    print(f"runtime costs (measured in {time.perf_counter() - t0:.1f} s): per action forward "
          f"{runtime.forward_overhead_s * 1e6:.0f} µs, backward {runtime.backward_overhead_s * 1e6:.0f} µs; "
          f"send latency {runtime.send_latency_s * 1e6:.0f} µs, bandwidth "
          f"{runtime.link_bandwidth / 1e9:.2f} GB/s; adam {runtime.optimizer_tensor_s * 1e6:.1f} µs/tensor "
          f"+ {runtime.optimizer_element_s * 1e9:.2f} ns/element")
    print(f"{'model':8s} {'compute only':>13s} {'predicted':>11s} {'measured':>11s} {'ratio':>7s} "
          f"{'cores used':>10s} {'load avg':>8s}")
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench_simulator.") as d:
        for name in names:
            compute_only, predicted, measured, cores = bench_example(name, microbatches, steps,
                                                                     Path(d), runtime)
            ratio = predicted / measured
            ok &= abs(ratio - 1) <= TARGET
            print(f"{name:8s} {compute_only * 1e3:11.2f}ms {predicted * 1e3:9.2f}ms "
                  f"{measured * 1e3:9.2f}ms {ratio:7.3f} {cores:10.2f} {os.getloadavg()[0]:8.2f}",
                  flush=True)
    return ok


def bench_speed(repeats: int = 50) -> None:
    """Time one simulate() call per schedule at a planner-sized pipeline (8 stages, 32 micro-batches)."""
    cost = StageCost(forward_s=1.0, backward_input_s=1.0, backward_weight_s=1.0, send_s=0.1,
                     activation_bytes=1)
    print("\nsimulate() wall time, 8 stages × 32 micro-batches (orders cached after the first call):")
    for schedule in SCHEDULES:
        v = 2 if schedule == "interleaved-1f1b" else 1
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
        return worker(argv[1], argv[2], argv[3], int(argv[4]))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--only", default=",".join(EXAMPLES), help="comma-separated examples")
    ap.add_argument("--microbatches", type=int, default=4)
    ap.add_argument("--steps", type=int, default=12)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"warning: load average {load:.2f}; other processes share the cores, so the measured "
              f"steps will be slower than predicted (see 'cores used')")
    ok = bench_examples([n for n in args.only.split(",") if n], args.microbatches, args.steps)
    bench_speed()
    print(f"\nall within {TARGET:.0%}" if ok else f"\nOFF TARGET (more than {TARGET:.0%} off)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
