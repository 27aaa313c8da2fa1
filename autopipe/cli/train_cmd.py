"""`autopipe train`: one rank of pipeline training (run under torchrun), or all local ranks with --launch."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

# not autopipe.runtime: its package imports torch.distributed.pipelining (~1.6 s of CPU
# here), which building this parser made every command pay
from autopipe._optimizers import DEVICES, OPTIMIZERS
from autopipe.cli._common import add_spec_args, load_plan, plan_knobs
from autopipe.errors import AutopipeError, RuntimeStageError, SpecError
from autopipe.plan_format import Plan
from autopipe.spec import ModelSpec, example_target, load_spec, parse_spec_args

if TYPE_CHECKING:
    from autopipe.runtime.optim import TrainConfig


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    p: argparse.ArgumentParser = sub.add_parser(
        "train", help="train with a plan on torch.distributed.pipelining (one rank; run under torchrun)",
        description="Train SPEC with PLAN.json. Each process is one rank: start them with "
                    "`torchrun --nproc-per-node P -m autopipe train ...`, or pass --launch P to "
                    "start P local ranks. The last stage prints the loss and time of every step.")
    add_spec_args(p)
    p.add_argument("--plan", required=True, metavar="PLAN.json", help="plan made by `autopipe plan`")
    p.add_argument("--steps", type=int, required=True, help="optimizer steps")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adam", help="default adam")
    p.add_argument("--batch-size", type=int, default=None, metavar="B",
                   help="samples per step over all replicas; the spec's batch_size knob becomes "
                        "B / (micro-batches x replicas) (the plan must have been made for that micro-batch)")
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="auto: the plan's devices (default); cpu; cuda (GPU LOCAL_RANK of this node)")
    p.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS",
                   help="a rank waiting this long on a peer stops with an error (default 300)")
    p.add_argument("--no-pin-malloc", dest="pin_malloc", action="store_false",
                   help="leave glibc's malloc thresholds as they are on CPU ranks (default: pinned)")
    p.add_argument("--no-pin-cores", dest="pin_cores", action="store_false",
                   help="let CPU ranks share all the cores (default: each local rank keeps to its "
                        "own share, unless already bound with taskset or numactl)")
    p.add_argument("--no-flush-denormal", dest="flush_denormal", action="store_false",
                   help="CPU ranks compute with subnormal floats as they are (default: flushed to zero, "
                        "as the profiles behind the plan were timed)")
    p.add_argument("--init", default=None, metavar="PATH",
                   help="start from these weights of the unsplit model: a .safetensors file, a "
                        "Hugging Face checkpoint folder or a torch .pt; each rank reads only its "
                        "own stages' tensors (default: the spec's model as built)")
    p.add_argument("--save", default=None, metavar="DIR",
                   help="save a checkpoint (model, optimizer, step) into DIR at the end; DIR/latest names "
                        "the newest complete one")
    p.add_argument("--save-every", type=int, default=None, metavar="K",
                   help="with --save: also save every K steps (the two newest checkpoints are kept)")
    p.add_argument("--resume", default=None, metavar="DIR",
                   help="continue from the newest complete checkpoint in DIR (--steps counts from the start)")
    p.add_argument("--seed", type=int, default=0,
                   help="the run's seed: dropout and the model's other random ops draw per node, step and "
                        "micro-batch from it, the same whatever the plan (default 0)")
    p.add_argument("--timeline", default=None, metavar="FILE.json",
                   help="time every rank's actions (forward, backward, loss, posting and waiting on messages, "
                        "optimizer step) and write them, with the plan's simulated step, as one Chrome trace "
                        "(ui.perfetto.dev); the last stage prints each action's median against the plan's")
    p.add_argument("--launch", type=int, default=None, metavar="P",
                   help="start P ranks on this machine (instead of torchrun) and wait for them")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the subcommand."""
    from autopipe.runtime.group import peer_lost
    from autopipe.runtime.optim import TrainConfig
    from autopipe.runtime.train import train

    plan = load_plan(args.plan)  # and against the model in prepare(), before any rank starts
    config = TrainConfig(steps=args.steps, lr=args.lr, optimizer=args.optimizer, device=args.device,
                         timeout_s=args.timeout, pin_malloc=args.pin_malloc, pin_cores=args.pin_cores,
                         flush_denormal=args.flush_denormal,
                         save=args.save, save_every=args.save_every, resume=args.resume,
                         init=args.init, seed=args.seed, timeline=args.timeline)
    spec = _spec(args, plan)
    if args.launch is not None:
        return _launch(args, spec, plan, config)
    try:
        train(spec, plan, config, log=lambda line: print(line, flush=True))
    except RuntimeStageError as e:
        if e.__cause__ is not None and peer_lost(e.__cause__):
            time.sleep(CAUSE_FIRST_S)  # [Note: the cause first]
        raise
    return 0


# [Note: the cause first]
#
# When one rank fails (a spec's loss raises), its peers fail a moment later with "lost a
# peer rank", and all of them print at once: the peers' lines often came first, and
# --launch, finding several ranks dead at one poll, blamed the lowest. A rank that lost a
# peer waits this long before it says so and exits, so the failing rank's own error is
# printed first and is the one --launch names.
CAUSE_FIRST_S = 2.0
# --launch gives the peers this long, after they have waited, to print and exit: with
# only --timeout as the grace (under CAUSE_FIRST_S for --timeout 1), it stopped them
# before they said what they lost, and their exit codes read as killed (-15).
EXIT_S = 3.0


def _spec(args: argparse.Namespace, plan: Plan) -> ModelSpec:
    knobs = parse_spec_args(args.spec_arg)
    if args.batch_size is not None:
        m = plan.microbatches * plan.replicas  # micro-batches over all replicas
        if args.batch_size < 1 or args.batch_size % m:
            each = f" x {plan.replicas} replicas" if plan.replicas > 1 else ""
            raise SpecError(f"--batch-size {args.batch_size} is not a positive multiple of the plan's "
                            f"{plan.microbatches} micro-batches{each}", hint=f"use a multiple of {m}, e.g. {m * 4}")
        if "batch_size" in knobs and knobs["batch_size"] != args.batch_size // m:
            raise SpecError(f"--batch-size {args.batch_size} asks for micro-batches of "
                            f"{args.batch_size // m} but --spec-arg batch_size={knobs['batch_size']}",
                            hint="pass one of the two")
        knobs["batch_size"] = args.batch_size // m
    return load_spec(args.spec, **plan_knobs(knobs, plan))


def _launch(args: argparse.Namespace, spec: ModelSpec, plan: Plan, config: TrainConfig) -> int:
    from autopipe.runtime.group import rank_device
    from autopipe.runtime.launch import launch
    from autopipe.runtime.materialize import check_init
    from autopipe.runtime.prepare import prepare
    from autopipe.runtime.train import check_resume, check_save

    if args.launch < 1:
        raise AutopipeError(f"--launch {args.launch}", hint="start at least one rank")
    prepare(spec, plan, args.launch)  # a wrong plan stops here, before any rank starts
    example_target(spec)  # and a target the schedules cannot cut (a tuple of labels and lengths)
    for rank in range(args.launch):  # and a device this machine lacks (each rank said so, started for nothing)
        rank_device(plan, rank, rank, args.device)
    if config.init is not None and config.resume is None:
        check_init(spec, config.init)  # and weights that do not fit the model
    resume, from_step = args.resume, None
    if config.resume is not None:  # and so does a checkpoint that cannot continue
        info = check_resume(config, spec.model, note=lambda line: print(f"note: {line}", file=sys.stderr, flush=True))
        resume, from_step = str(info.path), info.step
    if config.save is not None:  # and a place checkpoints cannot go
        check_save(config.save, resuming=config.resume is not None, from_step=from_step)
    cmd = [sys.executable, "-m", "autopipe", "train", args.spec, "--plan", args.plan,
           "--steps", str(args.steps), "--lr", repr(args.lr), "--optimizer", args.optimizer,
           "--device", args.device, "--timeout", repr(args.timeout), "--seed", str(args.seed)]
    for item in args.spec_arg:
        cmd += ["--spec-arg", item]
    if not args.pin_malloc:
        cmd.append("--no-pin-malloc")
    if not args.pin_cores:
        cmd.append("--no-pin-cores")
    if not args.flush_denormal:
        cmd.append("--no-flush-denormal")
    if args.batch_size is not None:
        cmd += ["--batch-size", str(args.batch_size)]
    for flag, value in (("--save", args.save), ("--save-every", args.save_every), ("--resume", resume),
                        ("--init", args.init), ("--timeline", args.timeline)):
        if value is not None:
            cmd += [flag, str(value)]
    # a peer notices the loss within --timeout, then waits CAUSE_FIRST_S before it says so
    result = launch(cmd, args.launch, grace_s=min(30.0, args.timeout) + CAUSE_FIRST_S + EXIT_S)
    if result.code:
        failed = result.first_failed
        code = result.codes[failed] if failed is not None else 0
        why = "its message above says why"
        if code < 0:  # it printed nothing: say how it ended
            name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
            why = f"it was killed by {name}" + (" (out of memory? the kernel's log says)"
                                                 if -code == signal.SIGKILL else "")
        print(f"autopipe train: error: rank {failed if failed is not None else '?'} failed first (exit codes "
              f"{list(result.codes)}); {why}", file=sys.stderr)
    return result.code
