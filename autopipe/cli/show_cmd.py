"""`autopipe show`: print a plan as a readable per-stage table and its simulated timeline."""

from __future__ import annotations

import argparse
from typing import Any

from autopipe.cli._common import load_plan
from autopipe.schedule.show import add_show_args, check_show_args, show_schedule


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    p: argparse.ArgumentParser = sub.add_parser(
        "show", help="print a plan: per-stage nodes, modules, time, memory and sends",
        description="Print PLAN.json as a table: one row per stage with its time and memory "
                    "breakdown, the modules it owns and the tensors it sends; then the "
                    "simulated timeline of one step (optionally as a PNG or a Chrome trace).")
    p.add_argument("plan", metavar="PLAN.json", help="a plan written by `autopipe plan`")
    add_show_args(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the subcommand."""
    from autopipe.report import format_plan

    plan = load_plan(args.plan, as_written=True)
    runtime = check_show_args(args)
    print(format_plan(plan))
    show_schedule(plan, args, runtime)
    return 0
