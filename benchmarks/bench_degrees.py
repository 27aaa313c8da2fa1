"""How many stages? Llama-2-7B and 70B shapes on 8, 16 and 64 H100s: pipeline × data parallel.

Each model (Hugging Face Llama on meta tensors, bf16 parameters, Adam with fp32 states and
master weights: 16 bytes a parameter, 4,096 tokens a sequence) is estimated for an H100
(``autopipe/profile/devices/h100.json``: 80 GB, NVLink 450 GB/s each way) once per
micro-batch size, and ``autopipe.partition.degrees.plan_degrees`` searches every pipeline
degree p dividing N (N/p replicas; 8 GPUs a node, 450 GB/s inside a node, 50 GB/s per GPU
between nodes: one 400 Gb/s NIC per GPU), both placements, the micro-batch sizes and the
schedules (1F1B and zb-h1) for a global batch of 256 sequences (1M tokens). Every
candidate is planned with the chain DP; the 3 fastest again with the ILP (1% gap, 10 s).

Limited, to stay within minutes on a 2-core machine: micro-batch sizes 1 and 2 for 7B
(larger ones only add activations and bubble at 4,096 tokens), 1 for 70B (its states
leave no room for more); GPipe is not tried (1F1B runs the same step holding fewer
micro-batches). It prints every candidate with its predicted step, samples/s and peak
memory (or why it has none), the chosen one, and checks that the chosen one is no slower
than the best plan of any fixed pipeline degree in the same run (exit 1 if not).

    python -m benchmarks.bench_degrees [--models 7b,70b] [--gpus 8,16,64] [--batch-size 256]
                                       [--shard-optimizer] [--profiles DIR]
"""

from __future__ import annotations

import argparse
import functools
import os
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import autopipe
from autopipe._units import format_seconds
from autopipe.partition.degrees import plan_degrees
from autopipe.plan_format import Plan
from autopipe.profile import Profile, estimate
from autopipe.report import degree_lines
from autopipe.spec import example_target

ROOT = Path(__file__).resolve().parent.parent
SIZES = {"7b": (1, 2), "70b": (1,)}
GPUS_PER_NODE = 8
INTER_NODE = 50e9


def profiles(preset: str, cache: Path | None) -> Callable[[int], Profile]:
    """``b -> Profile`` of the preset at micro-batches of ``b`` sequences, estimated once each
    (and kept in ``cache`` when given)."""
    @functools.cache
    def source(size: int) -> Profile:
        path = cache / f"llama2-{preset}-b{size}.json" if cache is not None else None
        if path is not None and path.is_file():
            return Profile.load(path)
        t = time.perf_counter()
        spec = autopipe.load_spec(f"{ROOT / 'examples' / 'llama'}.py:build", preset=preset,
                                  device="meta", dtype="bfloat16", seq_len=4096, batch_size=size)
        graph = autopipe.trace(spec.model, spec.example_inputs)
        prof = estimate(graph, spec.example_inputs, device_spec="h100", progress=False,
                        loss_fn=spec.loss_fn, target=example_target(spec))
        print(f"  profiled {preset} at micro-batches of {size} ({len(graph)} nodes) in "
              f"{time.perf_counter() - t:.1f} s", flush=True)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            prof.save(path)
        return prof

    return source


def check(plan: Plan) -> bool:
    """Print the best plan of each pipeline degree; True if the chosen one is no slower."""
    best: dict[int, float] = {}
    for row in plan.options["degrees"]:
        step = row.get("iteration_s")
        if isinstance(step, float):
            best[row["stages"]] = min(step, best.get(row["stages"], step))
    chosen = plan.predicted.iteration_s
    batch = plan.data_parallel.batch_size if plan.data_parallel else 0
    print("  best per pipeline degree: " + ", ".join(
        f"pp {p}: {batch / s:.2f} samples/s" for p, s in sorted(best.items())))
    ok = all(chosen <= s for s in best.values())
    print(f"  chosen {plan.num_stages} x {plan.replicas}: {batch / chosen:.2f} samples/s, "
          f"{'no slower than' if ok else 'SLOWER than'} every fixed pipeline degree's best")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="7b,70b")
    ap.add_argument("--gpus", default="8,16,64")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--shard-optimizer", action="store_true",
                    help="shard Adam's states over the replicas (ZeRO-1) instead of DDP")
    ap.add_argument("--profiles", type=Path, help="reuse (or write) the profiles in this folder")
    args = ap.parse_args()
    ok = True
    start = time.perf_counter()
    for preset in args.models.split(","):
        source = profiles(preset, args.profiles)
        for gpus in (int(n) for n in args.gpus.split(",")):
            print(f"\n== Llama-2-{preset.upper()} on {gpus} H100s ({GPUS_PER_NODE} a node), batch "
                  f"{args.batch_size} x 4,096 tokens, Adam "
                  f"({'ZeRO-1' if args.shard_optimizer else 'DDP'})", flush=True)
            t = time.perf_counter()
            try:
                plan = plan_degrees(source, gpus=gpus, gpus_per_node=GPUS_PER_NODE,
                                    inter_node_bandwidth=INTER_NODE, batch_size=args.batch_size,
                                    microbatch_sizes=SIZES[preset], schedule=("1f1b", "zb-h1"),
                                    shard_optimizer=args.shard_optimizer, optimizer="adam",
                                    mip_gap=0.01, time_limit=10.0)
            except autopipe.InfeasiblePlanError as e:
                print(f"  nothing fits ({time.perf_counter() - t:.1f} s): {e}")
                continue
            print("\n".join(degree_lines(plan)))
            ok &= check(plan)
            print(f"  step {format_seconds(plan.predicted.iteration_s)}; searched in "
                  f"{time.perf_counter() - t:.1f} s", flush=True)
    print(f"\nall in {time.perf_counter() - start:.1f} s; chosen never slower than a fixed "
          f"pipeline degree: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
