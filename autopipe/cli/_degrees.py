"""`autopipe plan --gpus N`: the flags of the data × pipeline search, checked and handed to plan_degrees."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from autopipe.cli._common import reject_flag
from autopipe.errors import PlanError
from autopipe.partition.degrees import Refine
from autopipe.partition.finalists import DEFAULT_FINALISTS
from autopipe.partition.planner import METHODS, ProfileSource
from autopipe.partition.replicas import check_nodes
from autopipe.plan_format import Plan

_FLAGS = (("--gpus-per-node", "gpus_per_node"), ("--intra-node-bandwidth", "intra_node_bandwidth"),
          ("--inter-node-bandwidth", "inter_node_bandwidth"), ("--microbatch-sizes", "microbatch_sizes"),
          ("--shard-optimizer", "shard_optimizer"), ("--screen", "screen"), ("--finalists", "finalists"))


def add_degree_args(p: argparse.ArgumentParser) -> None:
    """The flags of ``--gpus``."""
    g = p.add_argument_group(
        "data x pipeline search",
        "--gpus N tries every pipeline degree p dividing N (N/p data-parallel replicas), each "
        "micro-batch count and schedule, and keeps the most samples/s")
    g.add_argument("--gpus", type=int, metavar="N", help="GPUs to train on (instead of --stages)")
    g.add_argument("--gpus-per-node", type=int, metavar="G", help="GPUs per node (default: all in one)")
    g.add_argument("--intra-node-bandwidth", metavar="BYTES_PER_S",
                   help="between GPUs of a node (default: the device spec's link, e.g. NVLink 450GB)")
    g.add_argument("--inter-node-bandwidth", metavar="BYTES_PER_S",
                   help="per GPU between nodes (default 50GB: a 400 Gb/s NIC per GPU)")
    g.add_argument("--microbatch-sizes", metavar="B1,B2,...",
                   help="micro-batch sizes to try (default: every divisor of a replica's batch)")
    g.add_argument("--shard-optimizer", action="store_true",
                   help="shard optimizer states over the replicas (ZeRO-1) instead of a copy in each")
    g.add_argument("--screen", metavar="METHOD",
                   help=f"plan every candidate with this method first: {', '.join(METHODS)} (default dp)")
    g.add_argument("--finalists", type=int, metavar="K",
                   help="re-plan the K fastest candidates with --method and, measured here, re-time "
                        "them as whole stages (default 3)")


def check_degree_flags(args: argparse.Namespace) -> None:
    """Exactly one of --stages and --gpus; the search's flags only with --gpus; the default
    schedule (1f1b for --stages, auto for --gpus)."""
    if args.gpus is None:
        for flag, name in _FLAGS:
            value = getattr(args, name)
            reject_flag(value is not None and value is not False, flag, "with --gpus",
                        hint=f"drop {flag}, or plan for --gpus N instead of --stages")
        if args.stages is None:
            raise PlanError("give --stages N (pipeline stages) or --gpus N (the planner chooses "
                            "stages x data-parallel replicas)", hint="e.g. --stages 4, or --gpus 8 --batch-size 64")
        args.schedule = args.schedule or "1f1b"
        return
    for flag, value in (("--devices", args.devices), ("--link-bandwidth", args.link_bandwidth),
                        ("--virtual-stages", getattr(args, "virtual_stages", None))):
        reject_flag(value is not None, flag, "with --stages",
                    hint=f"with --gpus, give --memory and --intra-node-bandwidth / --inter-node-bandwidth; drop {flag}")
    check_nodes(args.gpus, args.gpus if args.gpus_per_node is None else args.gpus_per_node)
    if args.stages is not None and args.stages > 0 and args.gpus % args.stages:
        raise PlanError(f"{args.stages} stages do not divide {args.gpus} GPUs",
                        hint="give --stages a divisor of --gpus, or leave it out to try each")
    if args.batch_size is None:
        raise PlanError("--gpus needs --batch-size B: the samples per step over all GPUs, which "
                        "the data-parallel replicas split", hint="e.g. --gpus 8 --batch-size 64")
    args.schedule = args.schedule or "auto"


def _sizes(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise PlanError(f"--microbatch-sizes {text!r} is not a list of numbers", hint="write e.g. 1,2,4") from None


def plan_on_gpus(args: argparse.Namespace, source: ProfileSource, microbatches: int | str | None,
                 refine: Refine | None = None) -> Plan:
    """Run the search for ``args`` (printing each candidate as it is decided; ``refine``:
    ``plan_degrees``'s, for its choice)."""
    from autopipe.partition.degrees import plan_degrees
    from autopipe.report import degree_row

    def say(row: dict[str, Any]) -> None:
        print(degree_row(row), file=sys.stderr, flush=True)

    return plan_degrees(
        source, gpus=args.gpus, batch_size=args.batch_size, gpus_per_node=args.gpus_per_node,
        intra_node_bandwidth=args.intra_node_bandwidth, inter_node_bandwidth=args.inter_node_bandwidth,
        stages=args.stages, microbatches=microbatches, microbatch_sizes=_sizes(args.microbatch_sizes),
        schedule=args.schedule.split(",") if "," in args.schedule else args.schedule,
        shard_optimizer=args.shard_optimizer, memory_limit=args.memory,
        optimizer=args.optimizer, method=args.method, screen=args.screen or "dp",
        finalists=DEFAULT_FINALISTS if args.finalists is None else args.finalists, progress=say,
        max_blocks=args.max_blocks, time_limit=60.0 if args.time_limit is None else args.time_limit,
        mip_gap=1e-3 if args.gap is None else args.gap, solver=args.solver or "highs",
        deterministic=not args.timing, granularity=args.granularity, cut_at=args.cut_at,
        recompute=args.recompute, remake=args.remake, refine=refine)
