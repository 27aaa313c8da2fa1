"""`autopipe plan`: trace, profile (or load a profile) and partition a model; write the plan JSON."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from autopipe.cli._common import add_spec_args, spec_from_args
from autopipe.errors import PlanError
from autopipe.partition.planner import DEFAULT_MAX_BLOCKS, METHODS, check_options
from autopipe.partition.problem import SCHEDULES


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    p: argparse.ArgumentParser = sub.add_parser(
        "plan", help="find the fastest pipeline stages that fit in memory",
        description="Trace SPEC, profile it (or read --profile) and solve for the pipeline "
                    "stages that minimise the schedule's step time within each device's memory.")
    add_spec_args(p)
    p.add_argument("--stages", type=int, required=True, metavar="N", help="number of pipeline stages")
    mem = p.add_mutually_exclusive_group()
    mem.add_argument("--memory", metavar="SIZE", help="memory per stage, e.g. 80GiB (default: unlimited)")
    mem.add_argument("--devices", metavar="FILE.json",
                     help='per-stage devices: [{"name", "memory", "speed" | "spec", "count"}, ...]')
    p.add_argument("--microbatches", default=None, metavar="M",
                   help="micro-batches per step, or 'auto' (default: 2 x stages)")
    p.add_argument("--schedule", default="1f1b", metavar="NAME",
                   help=f"pipeline schedule: {', '.join(SCHEDULES)} (default 1f1b)")
    p.add_argument("--method", default="ilp", metavar="NAME",
                   help=f"{', '.join(METHODS)} (default ilp)")
    p.add_argument("--profile", metavar="PROFILE.json", help="use this profile instead of profiling")
    p.add_argument("--device-spec", metavar="NAME|FILE.json",
                   help="estimate costs for this device (h100, a100, ...) instead of measuring here; "
                        "implied (h100) for a model on the meta device")
    p.add_argument("--dtype", default=None, help="compute dtype to profile in (default: the model's)")
    p.add_argument("--optimizer", default="adam",
                   help="optimizer whose states count in memory: adam, adamw, sgd, sgd-momentum, none")
    p.add_argument("--link-bandwidth", metavar="BYTES_PER_S",
                   help="bandwidth between stages, e.g. 25e9 or 25GB (default: the device spec's, else 25 GB/s)")
    p.add_argument("--time-limit", type=float, default=60.0, metavar="S", help="MIP solver seconds (default 60)")
    p.add_argument("--gap", type=float, default=1e-3, help="relative MIP gap counted as solved (default 0.001)")
    p.add_argument("--max-blocks", type=int, default=DEFAULT_MAX_BLOCKS,
                   help=f"coarsen bigger graphs to this many blocks (default {DEFAULT_MAX_BLOCKS})")
    p.add_argument("--solver", default="highs", help="MIP solver: highs (default) or cbc")
    p.add_argument("--timing", action="store_true",
                   help="record solve seconds in the plan (the file is then not byte-reproducible)")
    p.add_argument("-o", "--output", required=True, metavar="PLAN.json", help="where to write the plan")
    p.set_defaults(run=run)


def _microbatches(text: str | None) -> int | str | None:
    if text is None or text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise PlanError(f"--microbatches {text!r} is not a number", hint="write e.g. 8, or auto") from None


def run(args: argparse.Namespace) -> int:
    """Run the subcommand."""
    import autopipe
    from autopipe.api import check_profile
    from autopipe.partition.planner import plan_profile
    from autopipe.profile import Profile, estimate, measure
    from autopipe.report import format_plan

    start = time.perf_counter()
    microbatches = _microbatches(args.microbatches)
    check_options(args.stages, microbatches, args.schedule, args.method)
    spec = spec_from_args(args)
    graph = autopipe.trace(spec.model, spec.example_inputs, spec.example_kwargs)
    on_meta = any(p.device.type == "meta" for p in spec.model.parameters())
    if args.profile:
        profile = Profile.load(args.profile)
        check_profile(graph, profile)
    elif args.device_spec or on_meta:
        profile = estimate(graph, spec.example_inputs, spec.example_kwargs,
                           device_spec=args.device_spec or "h100", dtype=args.dtype)
    else:
        profile = measure(graph, spec.example_inputs, spec.example_kwargs, dtype=args.dtype)
    plan = plan_profile(
        profile, num_stages=args.stages, memory_limit=args.memory, devices=args.devices,
        microbatches=microbatches, schedule=args.schedule, optimizer=args.optimizer,
        method=args.method, link_bandwidth=args.link_bandwidth, max_blocks=args.max_blocks,
        time_limit=args.time_limit, mip_gap=args.gap, solver=args.solver,
        deterministic=not args.timing)
    plan.save(args.output)
    print(format_plan(plan))
    print(f"wrote {args.output} ({time.perf_counter() - start:.1f} s)", file=sys.stderr)
    return 0
