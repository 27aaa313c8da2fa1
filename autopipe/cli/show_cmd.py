"""`autopipe show`: print a plan as a readable per-stage table and its simulated timeline,
or a profile's summary."""

from __future__ import annotations

import argparse
import json
from typing import Any

from autopipe.cli._common import load_plan
from autopipe.errors import AutopipeError
from autopipe.schedule.show import (
    add_show_args,
    check_runtime_costs,
    check_show_args,
    show_schedule,
)


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    p: argparse.ArgumentParser = sub.add_parser(
        "show", help="print a plan: per-stage nodes, modules, time, memory and sends",
        description="Print PLAN.json as a table: one row per stage with its time and memory "
                    "breakdown, the modules it owns and the tensors it sends; then the "
                    "simulated timeline of one step (optionally as a PNG or a Chrome trace). "
                    "Given a PROFILE.json (`autopipe profile`), print its summary.")
    p.add_argument("plan", metavar="PLAN.json", help="a plan written by `autopipe plan`, or a "
                                                     "profile written by `autopipe profile`")
    add_show_args(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the subcommand."""
    from autopipe.report import format_plan

    if _schema(args.plan) == "autopipe.profile/1":
        return _show_profile(args)
    plan = load_plan(args.plan, as_written=True)
    check_runtime_costs(plan, args)  # [Note: runtime costs counted once] in autopipe.schedule.show
    runtime = check_show_args(args)
    print(format_plan(plan))
    show_schedule(plan, args, runtime)
    return 0


def _schema(path: str) -> object:
    """The ``schema`` of the JSON object in ``path``; None where it cannot be read (then the
    plan's loader says why)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data.get("schema") if isinstance(data, dict) else None


def _show_profile(args: argparse.Namespace) -> int:
    """Print the summary of the profile ``args.plan``: the flags that draw a plan's timeline
    have none to draw (they were answered 'expected autopipe.plan/1' until 2026-12-07)."""
    from autopipe.cli.profile_cmd import summary
    from autopipe.profile.profile import Profile

    drawn = [flag for flag, given in (("--png", args.png), ("--trace", args.trace),
                                      ("--width", args.width is not None),
                                      ("--no-timeline", args.no_timeline),
                                      ("--runtime-costs", args.runtime_costs)) if given]
    if drawn:
        raise AutopipeError(f"{args.plan} is a profile, which has no schedule for "
                            f"{', '.join(drawn)} to draw",
                            hint=f"drop {', '.join(drawn)}, or plan it first: autopipe plan SPEC "
                                 f"--profile {args.plan} --stages N -o PLAN.json, and show PLAN.json")
    profile = Profile.load(args.plan)
    build = profile.meta.get("build")
    spec = build.get("spec") if isinstance(build, dict) else None
    knobs = build.get("spec_args") if isinstance(build, dict) else None
    given = "".join(f" --spec-arg {k}" for k in knobs) if isinstance(knobs, list) else ""
    print(summary(profile, str(spec) if spec else args.plan))
    print(f"plan with it: autopipe plan {spec or 'SPEC'}{given} --profile {args.plan} --stages N "
          f"-o PLAN.json")
    return 0
