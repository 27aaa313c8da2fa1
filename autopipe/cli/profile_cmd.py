"""`autopipe profile`: measure (cpu, cuda) or estimate (meta) per-node costs and write a Profile JSON."""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from autopipe._jsonio import check_writable
from autopipe._units import format_seconds, format_size
from autopipe.cli._common import add_spec_args, reject_flag
from autopipe.cli._estimate_build import build_record, built_for_estimate
from autopipe.errors import ProfileError
from autopipe.profile._dtypes import DTYPES
from autopipe.profile._timer import CLOCKS
from autopipe.profile.devices import load_device_spec
from autopipe.profile.memory import OPTIMIZERS, param_memory
from autopipe.profile.profile import Profile
from autopipe.spec import (
    ModelSpec,
    example_target,
    load_spec,
    load_spec_for_estimate,
    parse_spec_args,
)


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    p: argparse.ArgumentParser = sub.add_parser(
        "profile", help="measure or estimate per-node time and memory of a model",
        description="Trace SPEC on its example micro-batch and write per-node forward, "
                    "input-gradient and weight-gradient times and saved-activation bytes. "
                    "--device cpu/cuda measures on real tensors; --device meta estimates from "
                    "FLOPs and bytes on a --device-spec roofline without allocating the model.")
    add_spec_args(p)
    p.add_argument("--device", default=None, metavar="DEVICE",
                   help="cpu, cuda, cuda:N (measure) or meta (estimate); default cpu, or meta "
                        "where --device-spec is given")
    p.add_argument("--device-spec", default=None, metavar="NAME|FILE.json",
                   help="estimate (--device meta) for a shipped spec (a100, h100, h200) or your "
                        "own JSON file; default h100")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="compute dtype; default: the model's")
    p.add_argument("--warmup", type=int, default=None,
                   help="measuring: untimed runs per piece (default 2)")
    p.add_argument("--repeats", type=int, default=None,
                   help="measuring: timed runs per piece; median kept (default 5)")
    p.add_argument("--threads", type=int, default=None,
                   help="--device cpu: threads while measuring (default 1, for stable numbers; "
                        "0 = torch's default)")
    p.add_argument("--clock", choices=CLOCKS, default=None,
                   help="CPU clock: thread CPU time (auto with one thread; robust on a busy machine) "
                        "or wall time (perf_counter); CUDA always uses events")
    p.add_argument("--no-pin-malloc", dest="pin_malloc", action="store_false",
                   help="--device cpu: keep glibc's malloc defaults (autopipe train pins its thresholds "
                        "on CPU ranks, and so does profiling by default)")
    p.add_argument("--no-runtime-costs", action="store_true",
                   help="--device cpu: do not measure the runtime's per-action, per-send and "
                        "per-step costs (autopipe.runtime.calibrate, about 10 s) into the profile")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adam",
                   help="optimizer for the training-memory line of the summary (default adam)")
    p.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    p.add_argument("-o", "--output", required=True, metavar="PROFILE.json", help="where to write the profile")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the subcommand."""
    import autopipe
    from autopipe.profile import estimate, measure

    if args.device is None:  # --device-spec alone estimates, as `autopipe plan --device-spec` does
        args.device = "meta" if args.device_spec is not None else "cpu"
    meta = args.device == "meta"
    _check_flags(args, meta)
    check_writable(args.output)
    if meta:
        load_device_spec(args.device_spec or "h100")  # a bad name fails before the build
    knobs = parse_spec_args(args.spec_arg)
    progress = False if args.no_progress else None

    def estimated(spec: ModelSpec) -> Profile:
        graph = autopipe.trace(spec.model, spec.example_inputs, spec.example_kwargs)
        return estimate(graph, spec.example_inputs, spec.example_kwargs,
                        device_spec=args.device_spec or "h100", dtype=args.dtype, progress=progress,
                        loss_fn=spec.loss_fn, target=example_target(spec))

    if meta and "device" not in knobs:
        # built as `plan --device-spec` builds it, so that `plan --profile` traces the same graph
        profile, spec = built_for_estimate(args.spec, lambda e: _load(args.spec, knobs, e), estimated,
                                           said=[])
    elif meta:
        spec = load_spec(args.spec, **knobs)
        profile = estimated(spec)
    else:
        spec = load_spec(args.spec, **knobs)
        graph = autopipe.trace(spec.model, spec.example_inputs, spec.example_kwargs)
        threads = 1 if args.threads is None else args.threads
        profile = measure(graph, spec.example_inputs, spec.example_kwargs, device=args.device,
                          dtype=args.dtype, warmup=2 if args.warmup is None else args.warmup,
                          repeats=5 if args.repeats is None else args.repeats,
                          threads=threads or None, progress=progress, clock=args.clock or "auto",
                          pin_malloc=args.pin_malloc, loss_fn=spec.loss_fn, target=example_target(spec))
        if not args.no_runtime_costs:
            from autopipe.runtime.calibrate import profile_runtime

            profile = profile_runtime(profile, args.optimizer if args.optimizer != "none" else "sgd")
    profile = replace(profile, meta={**profile.meta, "build": build_record(args.spec, args.spec_arg, spec.model)})
    profile.save(args.output)
    print(summary(profile, spec.name, optimizer=args.optimizer))
    print(f"wrote {args.output}")
    return 0


def _check_flags(args: argparse.Namespace, meta: bool) -> None:
    """The estimate's flags only with --device meta, the measurement's only without."""
    reject_flag(args.device_spec is not None and not meta, "--device-spec",
                "with --device meta (it names the device an estimate is priced for; "
                f"--device {args.device} measures here)",
                hint=f"add --device meta to estimate for {args.device_spec}, or drop --device-spec "
                     "to measure on this machine")
    for flag, value in (("--warmup", args.warmup), ("--repeats", args.repeats),
                        ("--threads", args.threads), ("--clock", args.clock)):
        reject_flag(value is not None and meta, flag,
                    "when measuring (--device cpu or cuda); --device meta estimates and runs nothing",
                    hint=f"drop {flag}, or measure with --device cpu")
    # in the flags' own words: the library's "threads = -2 … or None for torch's default"
    # named a value the command line cannot give (until 2026-12-07)
    for flag, value, least, fix in (("--warmup", args.warmup, 0, "0 or more"),
                                    ("--repeats", args.repeats, 1, "1 or more"),
                                    ("--threads", args.threads, 0, "1 or more, or 0 for torch's default")):
        if value is not None and value < least:
            raise ProfileError(f"{flag} {value} is out of range", hint=f"use {flag} {fix}")
    cuda = args.device.startswith("cuda")
    for flag, value in (("--threads", args.threads), ("--clock", args.clock),
                        ("--no-pin-malloc", None if args.pin_malloc else True),
                        ("--no-runtime-costs", True if args.no_runtime_costs else None)):
        reject_flag(value is not None and (cuda or meta), flag,
                    "with --device cpu (CUDA is timed with events; meta runs nothing)",
                    hint=f"drop {flag}")


def _load(where: str, knobs: dict[str, Any], estimate: bool) -> tuple[ModelSpec, str | None]:
    """The spec for ``built_for_estimate``: ``load_spec_for_estimate``, or as usual."""
    return load_spec_for_estimate(where, **knobs) if estimate else (load_spec(where, **knobs), None)


def summary(p: Profile, name: str, *, optimizer: str = "adam") -> str:
    """A few lines about a profile: totals, training memory and, for measurements, the whole-model check."""
    params = sum(p.params.values())
    element = DTYPES[p.dtype].itemsize if p.dtype in DTYPES else 4
    train = param_memory(params, element_size=element, optimizer=optimizer)
    lines = [
        f"{name}: {len(p.nodes)} nodes on {p.device} ({p.dtype}, {p.method})",
        f"  forward {format_seconds(p.forward_s)}, backward {format_seconds(p.backward_s)} "
        f"(input {format_seconds(sum(n.backward_input_s for n in p.nodes))}, "
        f"weight {format_seconds(sum(n.backward_weight_s for n in p.nodes))})",
        f"  parameters {format_size(params)}, saved activations {format_size(p.activation_bytes)} "
        f"per micro-batch",
        f"  with {optimizer}: parameters + gradients + optimizer states = {format_size(train.total)} "
        f"({format_size(train.optimizer)} of optimizer states)",
    ]
    whole = p.meta.get("whole_model")
    if isinstance(whole, dict) and whole.get("forward_backward_s"):
        ratio = (p.forward_s + p.backward_s) / whole["forward_backward_s"]
        lines.append(f"  whole-model forward+backward {format_seconds(whole['forward_backward_s'])}; "
                     f"sum of nodes / whole = {ratio:.3f}")
    flops = p.meta.get("flops")
    if isinstance(flops, dict):
        lines.append(f"  {sum(flops.values()) / 1e12:.3f} TFLOP forward+backward")
    return "\n".join(lines)
