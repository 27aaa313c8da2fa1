"""`autopipe check`: fail (exit 1) when a plan is worse than a baseline plan."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from autopipe._jsonio import check_writable
from autopipe.cli._common import load_plan, plan_knobs, profile_record, reject_flag
from autopipe.errors import AutopipeError, PlanError
from autopipe.plan_format import Plan
from autopipe.quality.compare import compare_plans


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:  # argparse said "invalid _tolerance value: '1%'" (until 2026-12-07)
        raise argparse.ArgumentTypeError(f"tolerance {text!r} is not a number: write a fraction, "
                                         f"e.g. 0.01 for 1%") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"tolerance {text} is not a non-negative fraction")
    return value


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    p: argparse.ArgumentParser = sub.add_parser(
        "check", help="CI gate: exit 1 when a plan is slower or needs more memory than a baseline",
        description="Compare PLAN with a baseline plan (--baseline OLD.json), or re-plan a model "
                    "with PLAN's options and compare the result with PLAN (--spec SPEC), or re-plan "
                    "every case of a golden file of partition quality (--golden FILE). Exit 0 "
                    "when not worse, 1 when worse (a diff is printed), 2 on bad input.")
    p.add_argument("plan", metavar="PLAN.json", nargs="?",
                   help="the plan under test (or the baseline with --spec)")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--golden", metavar="GOLDEN.json",
                       help="re-plan every case of this golden file (profiles/golden.json)")
    group.add_argument("--baseline", metavar="OLD.json", help="the plan to compare against")
    group.add_argument("--spec", metavar="SPEC",
                       help="re-plan this model with PLAN's options and compare against PLAN")
    p.add_argument("--spec-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="keyword argument for the build function (with --spec)")
    p.add_argument("--tolerance", type=_tolerance, default=None,
                   help="allowed relative regression (default 0.01 = 1%%; with --golden, the file's)")
    p.add_argument("--profile", metavar="PROFILE.json",
                   help="with --spec: re-plan on this saved profile (as `autopipe plan --profile` "
                        "made PLAN) instead of profiling the model again")
    p.add_argument("-o", "--output", metavar="NEW.json", help="with --spec: write the new plan here")
    p.add_argument("--refresh", action="store_true",
                   help="with --golden: record today's results in the file (on purpose only)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the subcommand."""
    _check_flags(args)
    if args.golden is not None:
        return _golden(args)
    if args.plan is None:
        raise AutopipeError("no PLAN.json given", hint="autopipe check PLAN.json --baseline OLD.json")
    if args.spec is not None:
        if args.output:
            check_writable(args.output)
        old = load_plan(args.plan, as_written=True)
        new = _replan(args, old)
        if args.output:
            new.save(args.output)
    else:
        new, old = load_plan(args.plan, as_written=True), load_plan(args.baseline, as_written=True)
    result = compare_plans(new, old, tolerance=0.01 if args.tolerance is None else args.tolerance,
                           same_model=args.spec is not None)
    print(result.report())
    return 1 if result.worse else 0


def _check_flags(args: argparse.Namespace) -> None:
    reject_flag(bool(args.spec_arg) and args.spec is None, "--spec-arg",
                "with --spec (knobs of the model to re-plan)", hint="drop --spec-arg, or add --spec SPEC")
    reject_flag(args.profile is not None and args.spec is None, "--profile",
                "with --spec (the costs to re-plan on)", hint="drop --profile, or add --spec SPEC")
    reject_flag(args.output is not None and args.spec is None, "-o/--output",
                "with --spec (where the re-planned plan goes)", hint="drop -o, or add --spec SPEC")
    reject_flag(args.refresh and args.golden is None, "--refresh", "with --golden",
                hint="autopipe check --golden FILE --refresh")
    reject_flag(args.refresh and args.tolerance is not None, "--tolerance",
                "when checking; --refresh records today's results without comparing",
                hint="drop --tolerance, or drop --refresh")


def _replan(args: argparse.Namespace, old: Plan) -> Plan:
    """Plan the spec again with the options recorded in ``old``, once ``old`` is known to be
    a plan for that model (as ``autopipe train`` would check it)."""
    import autopipe
    from autopipe.quality.replan import replan
    from autopipe.runtime.validate import model_constants, validate_plan
    from autopipe.spec import load_spec, parse_spec_args

    spec = load_spec(args.spec, **plan_knobs(parse_spec_args(args.spec_arg), old))
    graph = autopipe.trace(spec.model, spec.example_inputs, spec.example_kwargs)
    try:
        validate_plan(old, graph, constants=model_constants(graph, spec))
    except PlanError as e:
        raise type(e)(f"{args.plan}: {e.message}", hint=e.hint) from None
    given = old.options.get("profile_file")
    if given and args.profile is None:
        print(f"note: {args.plan} was planned on a saved profile ({given}); it is re-planned on a "
              f"profile made again here, whose costs differ: give --profile {given} to re-plan on "
              f"the same costs", file=sys.stderr)
    _say_search(args.plan, old)
    if args.profile is None:
        return replan(spec, old)
    record = profile_record(args.profile)
    new = replan(spec, old, profile=args.profile)
    if old.options.get("profile_sha256") not in (None, record["profile_sha256"]):
        print(f"note: {args.profile} is not the profile {args.plan} was planned on ({given}, "
              f"another content): the plans are compared on different costs", file=sys.stderr)
    return dataclasses.replace(new, options={**new.options, **record})


def _say_search(path: str, old: Plan) -> None:
    """Say what is re-planned: a search's choice is compared with the same search run again."""
    from autopipe.quality.replan import searched

    again = searched(old)
    if again is None:
        return
    tried = ", ".join(f"{k} {'/'.join(map(str, v)) if isinstance(v, list) else v}"
                      for k, v in again.items() if v is not None and k not in ("screen", "finalists"))
    # a search of schedules alone was called a --batch-size search until 2026-12-07
    what = ("--gpus" if old.data_parallel is not None else
            "--batch-size" if again.get("microbatches") == "auto" else "--schedule auto")
    print(f"note: {path} is the choice of a {what} search; the same search ({tried}) is run "
          f"again and its choice compared with {path}'s", file=sys.stderr)


def _golden(args: argparse.Namespace) -> int:
    from autopipe.quality.golden import check_golden, refresh_golden, table

    if args.plan is not None:
        raise AutopipeError("--golden takes no PLAN.json", hint="autopipe check --golden FILE")
    if args.refresh:
        print(table(refresh_golden(args.golden)))
        print(f"recorded in {args.golden}")
        return 0
    results = check_golden(args.golden, tolerance=args.tolerance)
    print(table([r.now for r in results]))
    failed = [r for r in results if r.failures]
    for r in failed:
        for f in r.failures:
            print(f"WORSE: {f}")
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0
