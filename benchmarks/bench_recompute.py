"""Activation recomputation chosen by the ILP: Llama-2-7B on 8 H100 stages where memory binds.

The Llama-2-7B shape (examples/llama.py preset=7b on meta tensors, 4,096 tokens, one
sequence per micro-batch, bf16) estimated for an H100 (profiles/h100/llama2-7b.json, or
``--estimate`` to trace and estimate it again), planned for 8 stages, Adam (fp32 states
and master weights), 16 micro-batches, 1F1B, under a per-device memory limit below what
any partition needs without recomputation (the default 24 GiB: the most memory-balanced
chain split needs 25.0 GiB on its largest stage, and the ILP proves no convex one fits).
Rows:

    none      no recomputation: infeasible at this limit
    full      every block recomputed
    auto      the ILP chooses the cuts and which blocks to recompute together
    none, m=  no recomputation with fewer micro-batches, 8, 4, 2 (each schedule the planner
              models: 1F1B holds p − s of them whatever m ≥ p, GPipe m, zb-h1 min(m, p));
              the same 16 sequences then take 16/m steps. m = 1 is bounded, not planned:
              one sequence at a time takes at least the model's whole forward and backward

Each row: predicted step, the time for the 16 sequences, fits, the largest stage's
predicted peak memory, the solver's status and gap, and the solve time (wall clock).
Target: auto fits, and its step is ≤ full's and ≤ the best none alternative's time for
the same 16 sequences.

    python -m benchmarks.bench_recompute [--memory 24GiB] [--time-limit 120] [--estimate]
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from autopipe._units import format_seconds, format_size, parse_size
from autopipe.errors import InfeasiblePlanError, PlanError
from autopipe.partition import plan_profile
from autopipe.partition.chain import Chain
from autopipe.partition.coarsen import coarsen, merge_forced
from autopipe.partition.dp import min_memory
from autopipe.partition.planner import DEFAULT_MAX_BLOCKS
from autopipe.partition.problem import Config, from_profile
from autopipe.plan_format import Device, Plan
from autopipe.profile import Profile

ROOT = Path(__file__).resolve().parent.parent
STAGES, MICROBATCHES = 8, 16


@dataclass
class Row:
    name: str
    microbatches: int
    plan: Plan | None
    seconds: float
    why: str = ""

    def cells(self) -> list[str]:
        if self.plan is None:
            return [self.name, "-", "-", "no", "-", self.why, f"{self.seconds:.1f} s", "-"]
        p = self.plan
        groups = sum(len(s.recompute) for s in p.stages)
        nodes = sum(len(g) for s in p.stages for g in s.recompute)
        step = p.predicted.iteration_s
        return [f"{self.name} ({p.schedule})" if self.name.startswith("none, m") else self.name,
                format_seconds(step), format_seconds(step * MICROBATCHES / self.microbatches), "yes",
                format_size(max(p.predicted.peak_memory)), f"{p.solver.status}, gap {p.solver.gap:.1%}",
                f"{self.seconds:.1f} s", f"{groups} regions, {nodes} nodes" if groups else "-"]

    @property
    def per_batch(self) -> float:
        """Seconds for the 16 sequences (inf when it does not fit)."""
        if self.plan is None:
            return math.inf
        return self.plan.predicted.iteration_s * MICROBATCHES / self.microbatches


def _profile(estimate_again: bool) -> Profile:
    if not estimate_again:
        return Profile.load(ROOT / "profiles" / "h100" / "llama2-7b.json")
    import autopipe
    from autopipe.profile import estimate

    spec = autopipe.load_spec(f"{ROOT / 'examples' / 'llama'}.py:build", preset="7b", device="meta",
                              dtype="bfloat16", seq_len=4096, batch_size=1)
    graph = autopipe.trace(spec.model, spec.example_inputs)
    return estimate(graph, spec.example_inputs, device_spec="h100", progress=False)


def least_without_recompute(profile: Profile, stages: int, m: int) -> float:
    """Bytes on the largest stage of the most memory-balanced chain split without recomputation
    (1F1B, Adam): about the least any plan without it needs."""
    cfg = Config(num_stages=stages, microbatches=m, schedule="1f1b", link_bandwidth=float("inf"),
                 devices=tuple(Device(name=f"d{i}", memory=1 << 50) for i in range(stages)))
    found = min_memory(Chain(coarsen(merge_forced(from_profile(profile, cfg)), max(DEFAULT_MAX_BLOCKS, 8 * stages))))
    assert found is not None
    return found[0] * (1 << 50)


def _plan(prof: Profile, name: str, limit: int, m: int, recompute: str, schedule: str,
          time_limit: float) -> Row:
    t = time.perf_counter()
    try:
        plan = plan_profile(prof, num_stages=STAGES, memory_limit=limit, microbatches=m,
                            schedule=schedule, recompute=recompute, time_limit=time_limit)
    except InfeasiblePlanError as e:
        return Row(name, m, None, time.perf_counter() - t, why=e.message.split(":")[0])
    except PlanError as e:  # nothing found in the time (a busy host): a row, not a traceback
        return Row(name, m, None, time.perf_counter() - t, why=e.message)
    return Row(name, m, plan, time.perf_counter() - t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--memory", default="24GiB", help="per-device limit (default 24GiB)")
    ap.add_argument("--time-limit", type=float, default=120.0, help="MIP seconds per solve")
    ap.add_argument("--estimate", action="store_true",
                    help="trace and estimate the model again instead of the stored profile")
    args = ap.parse_args()
    prof = _profile(args.estimate)
    limit = int(parse_size(args.memory))
    print(f"== Llama-2-7B (4,096 tokens, bf16, Adam) estimated for H100: {STAGES} stages, "
          f"{MICROBATCHES} micro-batches, {format_size(limit)} per device")
    print(f"without recomputation the most memory-balanced chain split needs "
          f"{format_size(least_without_recompute(prof, STAGES, MICROBATCHES))} on its largest stage")
    head = ["recompute", "predicted step", f"{MICROBATCHES} sequences", "fits", "peak memory",
            "solver", "solve", "recomputed"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    rows = []
    for name, m, mode, schedule in [*((mode, MICROBATCHES, mode, "1f1b") for mode in ("none", "full", "auto")),
                                    *((f"none, m={m}", m, "none", "auto") for m in (8, 4, 2))]:
        rows.append(_plan(prof, name, limit, m, mode, schedule, args.time_limit))
        print("| " + " | ".join(rows[-1].cells()) + " |", flush=True)
    fewer = rows[3:]
    # one micro-batch a step runs the pipeline one sequence at a time: at least the model's
    # whole forward and backward per sequence, whatever the cuts (not planned: its MIPs
    # ran past 15 minutes here)
    serial = sum(n.forward_s + n.backward_input_s + n.backward_weight_s for n in prof.nodes)
    print(f"| none, m=1 | ≥ {format_seconds(serial)} | ≥ {format_seconds(serial * MICROBATCHES)} | "
          f"(a bound: the whole forward and backward per sequence) | - | not planned | - | - |")
    none, full, auto = rows[:3]
    best_alternative = min([r.per_batch for r in fewer] + [serial * MICROBATCHES])
    ok = (none.plan is None and auto.plan is not None
          and auto.per_batch <= full.per_batch * (1 + 1e-9) and auto.per_batch <= best_alternative)
    print(f"target (none does not fit; auto fits, ≤ full and ≤ the best none alternative for "
          f"the same {MICROBATCHES} sequences): {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
