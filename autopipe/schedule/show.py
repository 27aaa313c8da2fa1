"""The schedule part of ``autopipe show``: the text timeline, ``--png`` and ``--trace``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from autopipe._units import format_seconds
from autopipe.errors import AutopipeError

if TYPE_CHECKING:
    from autopipe.plan_format import Plan
    from autopipe.schedule.runtime_costs import RuntimeCosts

DEFAULT_WIDTH = 96


def add_show_args(p: argparse.ArgumentParser) -> None:
    """``--png``, ``--trace``, ``--width``, ``--no-timeline`` and ``--runtime-costs``."""
    p.add_argument("--png", metavar="FILE.png",
                   help="draw per-stage time and memory against the limits, and the timeline "
                        "(needs matplotlib: pip install 'autopipe[plot]')")
    p.add_argument("--trace", metavar="FILE.json",
                   help="write the simulated timeline as a Chrome/Perfetto trace (one track per stage)")
    p.add_argument("--width", type=int, default=None, metavar="COLUMNS",
                   help=f"columns of the text timeline (default {DEFAULT_WIDTH})")
    p.add_argument("--no-timeline", action="store_true", help="do not print the text timeline")
    p.add_argument("--runtime-costs", metavar="COSTS.json",
                   help="add the runtime's per-action, send and optimizer costs measured by "
                        "`python -m autopipe.runtime.calibrate` to the simulation")


def check_show_args(args: argparse.Namespace) -> RuntimeCosts | None:
    """Check ``args`` before anything is printed (until 2026-12-07 a bad ``--width`` or
    ``--png`` place was refused after the plan's table); the runtime costs to add, if asked.

    Raises:
        AutopipeError: a bad ``--width``, or one with ``--no-timeline``; a file that cannot be
            written; a bad ``--runtime-costs`` file.
    """
    from autopipe._jsonio import check_writable

    for out in (args.png, args.trace):
        if out:
            check_writable(out)
    width = DEFAULT_WIDTH if args.width is None else args.width
    if args.width is not None and args.no_timeline:
        raise AutopipeError("--width applies only to the text timeline, which --no-timeline turns off",
                            hint="drop --width or --no-timeline")
    if width < 8:
        raise AutopipeError(f"--width {width} is too narrow", hint="use at least 8 columns")
    if getattr(args, "runtime_costs", None):
        from autopipe.schedule.runtime_costs import RuntimeCosts

        return RuntimeCosts.load(args.runtime_costs)
    return None


def check_runtime_costs(plan: Plan, args: argparse.Namespace) -> None:
    """Refuse ``--runtime-costs`` where it would count costs twice or change nothing.

    [Note: runtime costs counted once]
    A plan made from a profile with runtime costs (``autopipe profile`` measures them by
    default) carries them in its stage times already (``plan.options["runtime"]``), and the
    simulation adds ``--runtime-costs`` on top: a ViT plan of 8.166 ms showed 9.190 ms, its
    per-action overheads counted twice, until 2026-12-07. Only a plan priced without them
    can take them here; and with ``--no-timeline`` and neither ``--png`` nor ``--trace``
    nothing shows the simulation they change.

    Raises:
        AutopipeError: either case.
    """
    if not getattr(args, "runtime_costs", None):
        return
    rt = plan.options.get("runtime")
    if isinstance(rt, dict):
        fo, bo = (float(rt.get(k, 0.0)) for k in ("forward_overhead_s", "backward_overhead_s"))
        raise AutopipeError(
            f"the plan's prediction already counts the runtime costs of its profile "
            f"({format_seconds(fo)} / {format_seconds(bo)} per forward / backward action); "
            f"--runtime-costs {args.runtime_costs} would add them a second time",
            hint="drop --runtime-costs; to price the plan with other costs, plan it from a "
                 "profile measured on the machine that trains")
    if args.no_timeline and not args.png and not args.trace:
        raise AutopipeError("--runtime-costs changes the simulated timeline, which --no-timeline "
                            "turns off (and neither --png nor --trace draws it)",
                            hint="drop --no-timeline, or add --png FILE.png or --trace FILE.json")


def show_schedule(plan: Plan, args: argparse.Namespace, runtime: RuntimeCosts | None = None) -> None:
    """Simulate ``plan`` (with ``runtime``, ``check_show_args``'s); print its timeline and
    write the files ``args`` asks for.

    Raises:
        PlanError: the plan cannot be simulated, or ``--png`` without matplotlib.
    """
    from autopipe.schedule.simulate import simulate_plan

    width = DEFAULT_WIDTH if args.width is None else args.width
    result = simulate_plan(plan, runtime=runtime)
    if not args.no_timeline:
        from autopipe.schedule.text import text_timeline

        print()
        if runtime is not None:
            print(f"with the runtime costs of {args.runtime_costs} "
                  f"(plan's own prediction: {format_seconds(plan.predicted.iteration_s)})")
        print(text_timeline(result, width=width))
    if args.png:
        from autopipe.schedule.render import render_plan

        render_plan(plan, args.png, result=result)
        print(f"wrote {args.png}")
    if args.trace:
        from autopipe.schedule.chrome_trace import write_chrome_trace

        write_chrome_trace(result, args.trace)
        print(f"wrote {args.trace}")
