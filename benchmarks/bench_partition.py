"""Partition quality and planner speed: autopipe vs uniform vs parameter-balanced, and scale.

1. Every example and the tied LM, profiled on this CPU as ``autopipe plan`` profiles by
   default (the loss as a node of the last stage, the optimizer's measured rates, the
   runtime's per-action, per-send and per-step costs; Adam), planned for 4 stages and 8
   micro-batches with no memory limit, and under a memory limit that forces a split (halfway between the most memory-balanced chain
   split's largest stage and the unconstrained optimum's): the simulated step of the
   ILP plan against the uniform layer split (Megatron, torchtitan), the
   parameter-balanced split (DeepSpeed) and the chain DP, with the ILP's status and gap.
   Targets: proven optimal (gap ≤ 1%) and no slower than uniform and params.
2. A synthetic 2,000-block DAG with skip edges (one chain, and two parallel branches)
   into 16 stages (32 micro-batches) to a 1% gap. Target: under 30 s.
3. A Llama-2-70B-shaped model (80 layers, bf16, 2,048 tokens) on meta tensors, traced,
   estimated on an H100 spec and planned for 16 stages on H100s and 8 on H200s, end to
   end. Target: under 2 minutes each.

    python -m benchmarks.bench_partition [--only gpt2,unet] [--skip-examples] [--skip-scale]
                                         [--skip-70b] [--profiles DIR]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import autopipe
from autopipe._units import format_seconds, format_size
from autopipe.partition import plan_profile
from autopipe.partition.chain import Chain
from autopipe.partition.coarsen import merge_forced
from autopipe.partition.dp import min_memory
from autopipe.partition.problem import Config, from_profile
from autopipe.partition.synthetic import synthetic_profile
from autopipe.plan_format import Device, Plan
from autopipe.profile import Profile, estimate, measure
from autopipe.runtime.calibrate import profile_runtime
from autopipe.spec import example_target

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ["mlp", "gpt2", "llama", "resnet", "unet", "bert", "tied_lm"]
STAGES, MICROBATCHES = 4, 8


def _profile(name: str, cache: Path | None) -> Profile:
    if cache is not None and (cache / f"{name}.json").is_file():
        return Profile.load(cache / f"{name}.json")
    spec = autopipe.load_spec(f"{ROOT / 'examples' / name}.py:build")
    graph = autopipe.trace(spec.model, spec.example_inputs, spec.example_kwargs)
    prof = profile_runtime(measure(graph, spec.example_inputs, spec.example_kwargs, progress=False,
                                   loss_fn=spec.loss_fn, target=example_target(spec)), "adam")
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        prof.save(cache / f"{name}.json")
    return prof


def forcing_limit(prof: Profile) -> int:
    """Memory per stage halfway between the least any chain split needs and what the
    fastest unconstrained plan uses (so the limit binds)."""
    free = plan_profile(prof, num_stages=STAGES, microbatches=MICROBATCHES)
    unconstrained = max(s.memory.total for s in free.stages)
    devices = tuple(Device(name=f"d{i}", memory=1 << 40) for i in range(STAGES))
    cfg = Config(num_stages=STAGES, microbatches=MICROBATCHES, schedule="1f1b", devices=devices,
                 link_bandwidth=25e9)
    found = min_memory(Chain(merge_forced(from_profile(prof, cfg))))
    assert found is not None
    least = found[0] * (1 << 40)
    return int(least + 0.5 * max(unconstrained - least, 0.02 * least))


def _cell(plan: Plan, name: str) -> str:
    b = plan.baselines[name]
    if b.iteration_s is None:
        return "does not fit" if b.stage_nodes else "n/a"
    return f"{format_seconds(b.iteration_s)} ({b.iteration_s / plan.predicted.iteration_s - 1:+.1%})"


def bench_examples(names: list[str], cache: Path | None) -> bool:
    print(f"== examples: {STAGES} stages, {MICROBATCHES} micro-batches, 1F1B, profiled on this CPU; "
          "simulated step per method (relative to autopipe)")
    head = (f"{'model':7s} {'nodes':>5s} {'limit':>10s} {'autopipe':>11s} {'status':>8s} {'gap':>6s} "
            f"{'solve':>6s} {'uniform':>22s} {'params':>22s} {'chain DP':>22s}")
    ok = True
    rows: dict[str, list[str]] = {"no memory limit": [], "a memory limit that forces the split": []}
    for name in names:
        prof = _profile(name, cache)
        for lines, limit in zip(rows.values(), (None, forcing_limit(prof))):
            t = time.perf_counter()
            plan = plan_profile(prof, num_stages=STAGES, microbatches=MICROBATCHES,
                                memory_limit=limit)
            took = time.perf_counter() - t
            sv = plan.solver
            me = plan.predicted.iteration_s
            beats = all(b.iteration_s is None or me <= b.iteration_s * (1 + 1e-9)
                        for k, b in plan.baselines.items() if k in ("uniform", "params"))
            ok &= beats and sv.status == "optimal" and sv.gap <= 0.01
            shown = format_size(limit) if limit else "-"
            lines.append(f"{name:7s} {len(prof.nodes):5d} {shown:>10s} {format_seconds(me):>11s} "
                         f"{sv.status:>8s} {sv.gap:6.2%} {took:5.1f}s {_cell(plan, 'uniform'):>22s} "
                         f"{_cell(plan, 'params'):>22s} {_cell(plan, 'dp'):>22s}")
    for what, lines in rows.items():
        print(f"-- {what}")
        print(head)
        print("\n".join(lines))
    print(f"target (optimal, gap ≤ 1%, ≤ uniform and ≤ params on every example): "
          f"{'met' if ok else 'MISSED'}")
    return ok


def bench_scale() -> bool:
    print("\n== synthetic 2,000-block DAG with skip edges, 16 stages, 32 micro-batches, 1% gap")
    ok = True
    for branches in (1, 2):
        prof = synthetic_profile(2000, seed=1, branches=branches, skip_prob=0.3 if branches == 1 else 0.1)
        t = time.perf_counter()
        plan = plan_profile(prof, num_stages=16, microbatches=32, mip_gap=0.01, max_blocks=2000)
        took = time.perf_counter() - t
        sv = plan.solver
        dp = plan.baselines["dp"].iteration_s
        ok &= took < 30 and sv.gap <= 0.01
        print(f"{branches} branch{'es' if branches > 1 else ''}: {took:5.1f} s, {sv.status}, gap "
              f"{sv.gap:.2%}, step {format_seconds(sv.objective_s)} (chain DP "
              f"{format_seconds(dp or float('nan'))}), {plan.options['ilp_binaries']} binaries left "
              f"of {plan.options['blocks'] * 15}")
    print(f"target (≤ 1% gap in under 30 s): {'met' if ok else 'MISSED'}")
    return ok


def bench_70b() -> bool:
    print("\n== Llama-2-70B shape (80 layers, bf16, 2,048 tokens, micro-batch 1) on meta tensors")
    t0 = time.perf_counter()
    spec = autopipe.load_spec(f"{ROOT / 'examples' / 'llama'}.py:build", preset="70b", device="meta",
                              dtype="bfloat16", seq_len=2048, batch_size=1)
    graph = autopipe.trace(spec.model, spec.example_inputs)
    t_trace = time.perf_counter() - t0
    prof = estimate(graph, spec.example_inputs, device_spec="h100", progress=False,
                    loss_fn=spec.loss_fn, target=example_target(spec))
    t_est = time.perf_counter() - t0 - t_trace
    print(f"build + trace {t_trace:.1f} s ({len(graph)} nodes, "
          f"{format_size(sum(prof.params.values()))} of parameters), estimate {t_est:.1f} s")
    ok = True
    runs: list[tuple[int, str, str]] = [(16, "h100", "adam"), (16, "h100", "sgd"), (8, "h200", "sgd")]
    for p, device, optimizer in runs:
        t = time.perf_counter()
        devices: list[dict[str, Any]] = [{"name": device, "spec": device, "count": p}]
        try:
            plan = plan_profile(prof, num_stages=p, devices=devices, optimizer=optimizer,
                                mip_gap=0.01)
        except autopipe.InfeasiblePlanError as e:
            took = time.perf_counter() - t
            print(f"{p:2d} x {device} ({optimizer}): {took:5.1f} s planning, infeasible: {e}")
            continue
        took = time.perf_counter() - t
        total = t_trace + t_est + took
        ok &= total < 120
        sv = plan.solver
        print(f"{p:2d} x {device} ({optimizer}): {took:5.1f} s planning, {total:5.1f} s end to end; "
              f"{sv.status}, gap {sv.gap:.2%}; step {format_seconds(plan.predicted.iteration_s)}, "
              f"largest stage {format_size(max(s.memory.total for s in plan.stages))}; "
              f"uniform {_cell(plan, 'uniform')}, params {_cell(plan, 'params')}, "
              f"chain DP {_cell(plan, 'dp')}")
    print(f"target (each end to end under 2 minutes): {'met' if ok else 'MISSED'}")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated examples")
    ap.add_argument("--skip-examples", action="store_true")
    ap.add_argument("--skip-scale", action="store_true")
    ap.add_argument("--skip-70b", action="store_true")
    ap.add_argument("--profiles", type=Path, help="reuse (or write) example profiles in this folder")
    args = ap.parse_args()
    ok = True
    if not args.skip_examples:
        ok &= bench_examples(args.only.split(",") if args.only else EXAMPLES, args.profiles)
    if not args.skip_scale:
        ok &= bench_scale()
    if not args.skip_70b:
        ok &= bench_70b()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
