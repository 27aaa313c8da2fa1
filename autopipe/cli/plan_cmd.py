"""`autopipe plan`: trace, profile (or load a profile) and partition a model; write the plan JSON."""

from __future__ import annotations

import argparse
import dataclasses
import gc
import math
import sys
import time
from collections.abc import Callable
from typing import Any

from autopipe._jsonio import check_writable
from autopipe._phases import phase
from autopipe._units import format_seconds
from autopipe.cli._common import add_spec_args, profile_record, reject_flag
from autopipe.cli._degrees import add_degree_args, check_degree_flags, plan_on_gpus
from autopipe.cli._estimate_build import build_record, built_for_estimate, explain_mismatch
from autopipe.errors import PlanError, PlanMismatchError, SpecError
from autopipe.partition.layers import GRANULARITIES, matcher
from autopipe.partition.mip_time import ROUNDS_SHARE, MipTime
from autopipe.partition.planner import DEFAULT_MAX_BLOCKS, METHODS, ProfileSource, check_options
from autopipe.partition.problem import SCHEDULES
from autopipe.plan_format import Plan
from autopipe.profile._dtypes import DTYPES
from autopipe.profile.devices import load_device_spec
from autopipe.profile.profile import Profile
from autopipe.spec import (
    ModelSpec,
    example_target,
    load_spec,
    load_spec_for_estimate,
    parse_spec_args,
)
from autopipe.trace import Graph


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    p: argparse.ArgumentParser = sub.add_parser(
        "plan", help="find the fastest pipeline stages that fit in memory",
        description="Trace SPEC, profile it (or read --profile) and solve for the pipeline "
                    "stages that minimise the schedule's step time within each device's memory.")
    add_spec_args(p)
    p.add_argument("--stages", type=int, metavar="N",
                   help="number of pipeline stages (with --gpus: try only this many)")
    mem = p.add_mutually_exclusive_group()
    mem.add_argument("--memory", metavar="SIZE", help="memory per stage, e.g. 80GiB (default: unlimited; with --gpus, the "
                          "--device-spec's memory where it has one)")
    mem.add_argument("--devices", metavar="FILE.json",
                     help='per-stage devices: [{"name", "memory", "speed" | "spec", "count"}, ...]')
    p.add_argument("--microbatches", default=None, metavar="M",
                   help="micro-batches per step, or 'auto': each divisor of --batch-size, "
                        "profiled at its micro-batch size (default: 2 x stages; auto with --batch-size)")
    p.add_argument("--batch-size", type=int, default=None, metavar="B",
                   help="samples per step; SPEC's batch_size knob becomes B / micro-batches")
    p.add_argument("--schedule", default=None, metavar="NAME",
                   help=f"pipeline schedule: {', '.join(SCHEDULES)}, or auto (default 1f1b); with --gpus "
                        "also a list (1f1b,zb-h1), default auto")
    p.add_argument("--virtual-stages", type=_positive(int), default=None, metavar="V",
                   help="--schedule interleaved-1f1b: chunks per rank; the model is cut into "
                        "stages x V chunks, chunk c on rank c mod stages (default 2)")
    p.add_argument("--method", default="ilp", metavar="NAME",
                   help=f"{', '.join(METHODS)} (default ilp)")
    p.add_argument("--recompute", default="auto", metavar="MODE",
                   help="activation recomputation: auto (where memory binds, the blocks the ILP "
                        "chooses), none, or full (every block that can be); default auto")
    p.add_argument("--remake", default="auto", metavar="MODE",
                   help="values that depend on no input (a causal mask, rotary tables): a stage "
                        "that reads them makes them again instead of receiving them where that "
                        "is faster than sending them (auto), always (all), or never (none); "
                        "default auto")
    p.add_argument("--granularity", choices=GRANULARITIES,
                   help="node: cut anywhere (the default without --cut-at); layer: only between "
                        "the model's repeated blocks (its longest module list X.0, X.1, ...), as "
                        "torchtitan, DeepSpeed and Megatron-LM do (for `autopipe export`)")
    p.add_argument("--cut-at", metavar="PATTERN",
                   help="cut only between the modules PATTERN matches: a glob over module paths "
                        "(model.layers.*) or a regex; implies --granularity layer")
    p.add_argument("--profile", metavar="PROFILE.json", help="use this profile instead of profiling")
    # `autopipe profile --device meta` estimates; plan has no such flag, and argparse read
    # `--device` as an ambiguous abbreviation of --devices and --device-spec
    p.add_argument("--device", help=argparse.SUPPRESS)
    p.add_argument("--device-spec", metavar="NAME|FILE.json",
                   help="estimate costs for this device (h100, a100, ...) instead of measuring here; "
                        "implied (h100) for a model on the meta device")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="compute dtype to profile in (default: the model's)")
    p.add_argument("--optimizer", default="adam",
                   help="optimizer whose states count in memory: adam, adamw, sgd, sgd-momentum, none")
    p.add_argument("--link-bandwidth", metavar="BYTES_PER_S",
                   help="bandwidth between stages, e.g. 25e9 or 25GB (default: the device spec's, else 25 GB/s)")
    p.add_argument("--time-limit", type=_positive(float), default=None, metavar="S",
                   help="--method ilp: MIP solver seconds, all solves together (default 60; a search shares "
                        "them out; a measured plan keeps a quarter for its re-solves on whole-stage times)")
    p.add_argument("--gap", type=_gap, default=None,
                   help="--method ilp: relative MIP gap counted as solved (default 0.001)")
    p.add_argument("--max-blocks", type=_positive(int), default=DEFAULT_MAX_BLOCKS,
                   help=f"coarsen bigger graphs to this many blocks, at least 8 per stage "
                        f"(default {DEFAULT_MAX_BLOCKS})")
    p.add_argument("--solver", default=None, help="--method ilp: MIP solver, highs (default) or cbc")
    p.add_argument("--timing", action="store_true",
                   help="record solve seconds in the plan (the file is then not byte-reproducible)")
    p.add_argument("--no-runtime-costs", action="store_true",
                   help="do not measure the runtime's per-action, per-send and per-step costs "
                        "(done when autopipe measures the model on the CPU, about 10 s)")
    p.add_argument("--no-refine", action="store_true",
                   help="plan on the per-node profile only: do not re-time the planned stages as "
                        "whole modules and re-solve (done when autopipe measures the model here)")
    p.add_argument("-o", "--output", required=True, metavar="PLAN.json", help="where to write the plan")
    add_degree_args(p)
    p.set_defaults(run=run)


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text} is not positive")
        if not math.isfinite(value):  # inf: the plan was made, then could not be written as JSON
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        return value

    return parse


def _gap(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"gap {text} is not a fraction in [0, 1), e.g. 0.001")
    return value


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
    from autopipe.partition.planner import plan_profile
    from autopipe.report import format_plan
    from autopipe.runtime.calibrate import runtime_profiler

    start = time.perf_counter()
    microbatches = _microbatches(args.microbatches)
    check_degree_flags(args)
    if args.gpus is None:
        check_options(args.stages, microbatches, args.schedule, args.method, args.batch_size,
                      recompute=args.recompute, virtual_stages=args.virtual_stages, remake=args.remake,
                      one_profile=bool(args.profile))
    _check_flags(args)
    if args.cut_at is not None:
        matcher(args.cut_at)  # a bad regex fails before minutes of profiling
    check_writable(args.output)
    if args.device_spec:
        load_device_spec(args.device_spec)  # a bad name fails before the build
    knobs = parse_spec_args(args.spec_arg)
    source: ProfileSource
    graph = spec = None
    said: list[str] = []  # why a build for an estimate had weights, said once
    profiles: dict[int, Profile] = {}  # a batch-size search's, by micro-batch size
    with_runtime = None if args.no_runtime_costs else runtime_profiler(
        args.optimizer if args.optimizer != "none" else "sgd")
    if args.batch_size is None or args.profile:
        graph, source, spec = _built_and_profiled(args, knobs, with_runtime, said=said)
        if source.method == "estimate":
            # the graph and the model on meta live until the command ends: move them out of the
            # collector's way (~0.8 s of full collections at 70B; [Note: no collections while tracing])
            gc.freeze()
    else:
        if "batch_size" in knobs:
            raise SpecError("--batch-size sets the spec's batch_size knob (the micro-batch size); "
                            "it cannot be given with --spec-arg batch_size",
                            hint="pass one of the two")

        def source(size: int) -> Profile:
            profiles[size] = _built_and_profiled(args, knobs, with_runtime, size, said=said)[1]
            return profiles[size]

    mip = MipTime(60.0 if args.time_limit is None else args.time_limit)  # refine's solves share it
    # measured here, refined: the re-solves get their share ([Note: time kept for the re-solves])
    refining = not (args.no_refine or args.profile or args.device_spec)

    def solve(source: ProfileSource, **choice: Any) -> Plan:
        """Plan ``source``; ``choice`` replaces options (``refine_choice``'s one candidate)."""
        given = dict(num_stages=args.stages, microbatches=microbatches, batch_size=args.batch_size,
                     schedule=args.schedule, virtual_stages=args.virtual_stages, method=args.method)
        return mip.give(1, lambda seconds: plan_profile(
            source, **{**given, **choice}, memory_limit=args.memory, devices=args.devices,
            optimizer=args.optimizer, link_bandwidth=args.link_bandwidth,
            max_blocks=args.max_blocks, time_limit=seconds,
            mip_gap=1e-3 if args.gap is None else args.gap, solver=args.solver or "highs",
            deterministic=not args.timing, granularity=args.granularity, cut_at=args.cut_at,
            recompute=args.recompute, remake=args.remake))

    built: dict[int, tuple[ModelSpec, Graph]] = {}

    def refined_choice(found: Plan, size: int, replan: Callable[[Profile], Plan]) -> Plan:
        """A search's candidate of micro-batches of ``size`` (over sizes, or over degrees),
        refined where that size was measured here: that candidate alone."""
        if args.no_refine or size not in profiles or profiles[size].method != "measure":
            return found
        if size not in built:  # each finalist of this size, and the winner again, refine on one build
            sized = _spec_at(args.spec, knobs, size)[0]
            built[size] = (sized, autopipe.trace(sized.model, sized.example_inputs, sized.example_kwargs))
        sized, traced = built[size]
        # its baselines planned as the candidate alone: a degree search's by its own replan
        by_method = ((lambda p, m, **c: replan(p, method=m)) if args.gpus is not None  # type: ignore[call-arg]
                     else (lambda p, m, **c: solve(p, **{**c, "method": m, "batch_size": None})))
        return _refined(found, profiles[size], traced, sized, replan, size=size, by_method=by_method)

    if args.gpus is not None:
        plan = plan_on_gpus(args, source, microbatches, refine=refined_choice if refining else None)
    else:
        if refining:
            mip.hold()
        plan = solve(source)
        if refining:
            if graph is not None and spec is not None and isinstance(source, Profile):
                mip.share_among(ROUNDS_SHARE)
                plan = _refined(plan, source, graph, spec, solve, by_method=lambda p, m, **c: solve(p, method=m, **c))
            elif "microbatch_size" in plan.options and all(p.method == "measure" for p in profiles.values()):
                from autopipe.refine import refine_search

                plan = refine_search(plan, profiles, solve, refined_choice, mip=mip)
    if args.profile:  # `check --spec` re-plans on the same costs given this file again
        plan = dataclasses.replace(plan, options={**plan.options, **profile_record(args.profile)})
    with phase("save"):
        plan.save(args.output)
    print(format_plan(plan))
    print(f"wrote {args.output} ({time.perf_counter() - start:.1f} s)", file=sys.stderr)
    return 0


def _check_flags(args: argparse.Namespace) -> None:
    """Flags that a given --profile or a non-ILP --method would ignore, or that contradict each
    other, are errors. Sets --granularity where it was not given (layer with --cut-at)."""
    if args.device is not None:
        raise PlanError(f"autopipe plan takes no --device ({args.device}): it plans for the device "
                        f"its costs come from",
                        hint="--device-spec NAME estimates for a device (h100, a100, h200, or a "
                             "JSON file; a spec that builds on meta with --spec-arg device=meta); "
                             "without it the model is measured on this machine")
    if args.granularity == "node" and args.cut_at is not None:
        raise PlanError(f"--granularity node cuts anywhere, but --cut-at {args.cut_at!r} cuts only "
                        f"between the modules it matches",
                        hint="drop one of them: --cut-at alone implies --granularity layer")
    if args.granularity is None:
        args.granularity = "node" if args.cut_at is None else "layer"
    for flag, value in (("--device-spec", args.device_spec), ("--dtype", args.dtype)):
        # an estimate is of a model on meta: `autopipe profile` refuses --device-spec without it
        made = f"--device meta {flag} {value}" if flag == "--device-spec" else f"{flag} {value}"
        reject_flag(value is not None and bool(args.profile), flag,
                    "when autopipe profiles the model itself; --profile gives the costs",
                    hint=f"drop {flag}, or drop --profile (or make the profile with "
                         f"`autopipe profile ... {made}`)")
    reject_flag(args.no_runtime_costs and bool(args.profile or args.device_spec), "--no-runtime-costs",
                "when autopipe measures the model itself", hint="drop --no-runtime-costs")
    reject_flag(args.no_refine and bool(args.profile or args.device_spec), "--no-refine",
                "when autopipe measures the model itself (only measured stages are re-timed)",
                hint="drop --no-refine")
    # a --gpus search screens by the ILP too with --screen ilp (refused here until 2026-12-07)
    mip = args.method == "ilp" or (args.gpus is not None and args.screen == "ilp")
    for flag, value in (("--time-limit", args.time_limit), ("--gap", args.gap),
                        ("--solver", args.solver)):
        reject_flag(value is not None and not mip, flag,
                    f"with --method ilp{' or --screen ilp' if args.gpus is not None else ''} (the MIP "
                    f"solver); --method {args.method} does not use it", hint=f"drop {flag}, or use --method ilp")


def _built_and_profiled(args: argparse.Namespace, knobs: dict[str, Any],
                        with_runtime: Callable[[Profile], Profile] | None, size: int | None = None, *,
                        said: list[str]) -> tuple[Graph, Profile, ModelSpec]:
    """SPEC built (at micro-batch ``size`` where given) and profiled; for an estimate or a
    given profile built on the meta device where it can be ([Note: building for an estimate]
    in ``autopipe.spec``), else with weights and, for an estimate, a note on stderr why (once:
    ``said`` holds what was said)."""
    if args.device_spec and not args.profile and "device" not in knobs:
        def load(estimate: bool) -> tuple[ModelSpec, str | None]:
            with phase("build"):
                return _spec_at(args.spec, knobs, size, estimate=estimate)

        (graph, profile), spec = built_for_estimate(args.spec, load, lambda s: _profile(args, s, None),
                                                    said=said)
        return graph, profile, spec
    with phase("build"):
        # planning from a given profile reads no weights either: built as for an estimate, it
        # traces the same graph (no note where it cannot be: nothing is estimated)
        spec = _spec_at(args.spec, knobs, size, estimate=bool(args.profile))[0]
    meta = "the model is on the meta device, so its costs are estimated for h100 (--device-spec NAME for another)"
    if not args.profile and not args.device_spec and meta not in said and any(
            p.device.type == "meta" for p in spec.model.parameters()):
        said.append(meta)  # a meta model cannot be measured: say what it is priced for
        print(meta, file=sys.stderr)
    return (*_profile(args, spec, with_runtime), spec)


def _spec_at(spec: str, knobs: dict[str, Any], size: int | None,
             estimate: bool = False) -> tuple[ModelSpec, str | None]:
    """SPEC built for micro-batches of ``size`` samples (its ``batch_size`` knob; None: as
    given), ``load_spec_for_estimate`` with ``estimate``: the spec, why not on meta."""
    sized = {**knobs, **({"batch_size": size} if size is not None else {})}
    try:
        if estimate:
            return load_spec_for_estimate(spec, **sized)
        return load_spec(spec, **sized), None
    except SpecError as e:
        if "batch_size" not in str(e):
            raise
        raise SpecError(f"--batch-size needs {spec} to take a batch_size knob (samples per "
                        f"micro-batch): {e.message}",
                        hint="add batch_size to the build function, or give --microbatches "
                             "without --batch-size") from e


def _refined(plan: Plan, profile: Profile, graph: Graph, spec: ModelSpec,
             replan: Callable[[Profile], Plan], *, size: int | None = None,
             by_method: Callable[..., Plan] | None = None) -> Plan:
    """``plan`` refined on whole-stage times where the profile was measured here
    (autopipe.refine); with ``size``, a search's candidate of micro-batches of ``size``, alone;
    ``by_method(profile, method, **choice)`` plans by a baseline's method (``refine``'s ``baseline_plan``)."""
    from autopipe.refine import can_refine, ranks_of, refine, refine_candidate

    if can_refine(graph, profile) is not None:
        return plan
    choice = size is not None
    refined = (refine_candidate if choice else refine)(
        plan, profile, graph, spec.example_inputs, spec.example_kwargs, replan,
        loss_fn=spec.loss_fn, target=example_target(spec), baseline_plan=by_method)
    info = refined.options["refine"]
    last = info["rounds"][-1]
    ratios = ", ".join(f"{f:.2f}/{b:.2f}" for f, b in zip(last["forward_ratio"], last["backward_ratio"]))
    again = int(info.get("timed_again_from", 0))
    what = ""
    if choice:
        dp = plan.data_parallel
        ranks = len(set(ranks_of(plan)))
        what = (f"the search's candidate of {ranks} stage{'s' * (ranks != 1)}"
                + (f" x {dp.degree} replicas" if dp is not None else "")
                + f", {plan.microbatches} x {size} {plan.schedule}, "
                + ("timed again as the fastest re-timed finalist; " if again else ""))
    print(what + f"refined on whole-stage times: {len(info['rounds']) - again} round(s)"
          f"{'' if info['converged'] else ' (cuts still moving: the fastest measured round kept)'}; "
          f"stage forward/backward measured / node sums {ratios}; stages timed {info['timed']}; "
          f"step {format_seconds(refined.predicted.iteration_s)} ("
          f"{'timed before' if again else 'node sums'} {format_seconds(plan.predicted.iteration_s)})"
          + (f"; the cuts measured kept (other cuts solved on their times promised "
             f"{last['gain_kept_out']:.1%} less, within the timings' noise)" if "gain_kept_out" in last else ""),
          file=sys.stderr)
    return refined


def _profile(args: argparse.Namespace, spec: ModelSpec,
             with_runtime: Callable[[Profile], Profile] | None) -> tuple[Graph, Profile]:
    """Trace ``spec`` and profile it: --profile, an estimate (--device-spec or a meta
    model), else measured here, with the runtime's costs (``with_runtime``, which measures
    them once for every size of a search)."""
    import autopipe
    from autopipe.api import check_profile
    from autopipe.profile import estimate, measure

    graph = autopipe.trace(spec.model, spec.example_inputs, spec.example_kwargs)
    on_meta = any(p.device.type == "meta" for p in spec.model.parameters())
    if args.profile:
        profile = Profile.load(args.profile)
        try:
            check_profile(graph, profile)
        except PlanMismatchError as e:
            raise explain_mismatch(
                e, profile, args.profile, build_record(args.spec, args.spec_arg, spec.model)) from None
        return graph, profile.with_marks(graph)
    loss = {"loss_fn": spec.loss_fn, "target": example_target(spec)}
    if args.device_spec or on_meta:
        return graph, estimate(graph, spec.example_inputs, spec.example_kwargs,
                               device_spec=args.device_spec or "h100", dtype=args.dtype, **loss)
    profile = measure(graph, spec.example_inputs, spec.example_kwargs, dtype=args.dtype, **loss)
    return graph, profile if with_runtime is None else with_runtime(profile)
