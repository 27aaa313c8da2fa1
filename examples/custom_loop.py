"""Your own training loop around an autopipe plan: AdamW, a cosine learning rate, gradient clipping.

Each process is one rank of the pipeline; start them with torchrun::

    autopipe plan examples/gpt2.py:build --stages 2 --microbatches 4 -o plan.json
    torchrun --nproc-per-node 2 examples/custom_loop.py --plan plan.json --steps 20

A plan with data-parallel replicas (``autopipe plan --gpus N --batch-size B``) runs on
stages × replicas ranks; each replica trains on its share of the global batch, and with
``--shard-optimizer`` each holds AdamW's states for its share of the parameters only.

``autopipe.runtime.build`` gives this rank's stages (``pipe``); the loop is plain PyTorch.
The rank of the last stage (of replica 0) prints each step's loss, gradient norm and learning rate.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import torch

import autopipe
from autopipe.errors import AutopipeError
from autopipe.runtime import build
from autopipe.spec import parse_spec_args


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="custom_loop.py", description=__doc__.split("\n")[0])
    p.add_argument("--plan", required=True, help="plan made by `autopipe plan` for SPEC")
    p.add_argument("--spec", default="examples/gpt2.py:build", help="the model (default GPT-2)")
    p.add_argument("--spec-arg", action="append", default=[], metavar="KEY=VALUE", help="build knobs")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (cosine decay to 0)")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--max-norm", type=float, default=1.0, help="clip the global gradient norm to this")
    p.add_argument("--device", default="auto", help="auto (the plan's), cpu or cuda")
    p.add_argument("--out", default=None, help="write losses, norms and learning rates here (JSON)")
    args = p.parse_args(argv)
    for name, ok, want in (("--steps", args.steps >= 1, "at least 1"), ("--lr", 0 < args.lr < math.inf, "a positive rate"),
                           ("--max-norm", args.max_norm >= 0, "0 or more"),
                           ("--weight-decay", args.weight_decay >= 0, "0 or more")):
        if not ok:  # NaN too
            p.error(f"{name} is {getattr(args, name[2:].replace('-', '_'))}; use {want}")
    if args.out is not None:  # found only after training until 2026-12-07, as a traceback
        folder = os.path.dirname(os.path.abspath(args.out))
        if os.path.isdir(args.out) or not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            why = "is a directory" if os.path.isdir(args.out) else f"{folder} is not a folder you can write to"
            p.error(f"--out {args.out}: {why}; name a JSON file in an existing folder")
    try:
        return train(args)
    except AutopipeError as e:  # a wrong plan, spec, device or checkpoint: one line, as the CLI says it
        print(f"{p.prog}: error: {e.message}" + (f"\n  hint: {e.hint}" if e.hint else ""), file=sys.stderr)
        return 2


def train(args: argparse.Namespace) -> int:
    plan = autopipe.Plan.load(args.plan)
    spec = autopipe.load_spec(args.spec, **parse_spec_args(args.spec_arg))
    with build(plan, spec, device=args.device) as pipe:
        # this rank's optimizer as the plan charges it: over the share of its stage's parameters
        # it owns where the plan shards the optimizer over replicas (ZeRO-1), else over all of
        # them; none on a rank whose stage only runs the loss
        optimizer = pipe.optimizer(lambda ps: torch.optim.AdamW(ps, lr=args.lr, weight_decay=args.weight_decay)
                                   if ps else None)
        inner = getattr(optimizer, "inner", optimizer)  # the torch optimizer (None: it owns nothing)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(inner, T_max=args.steps) if inner else None
        record: dict[str, list[float]] = {"loss": [], "norm": [], "lr": []}
        for step in range(args.steps):
            replicas = pipe.replicas  # data-parallel replicas of the pipeline (dp = 1: one)
            batch = spec.batch(plan.microbatches * replicas.dp, step)  # every rank draws the same batch
            inputs, target = pipe.take(*replicas.share(*batch))  # its replica's share, what it reads
            losses = pipe.step(inputs, target)  # forward + backward of all micro-batches
            pipe.sync_tied_grads()              # tied weights: sum the copies; replicas: average
            norm = pipe.clip_grad_norm_(args.max_norm)  # one norm over all stages
            # the same cosine, for the record, where this rank steps nothing
            lr = schedule.get_last_lr()[0] if schedule else args.lr * (1 + math.cos(math.pi * step / args.steps)) / 2
            if optimizer is not None:
                optimizer.step()  # sharded: every replica steps its share, then they exchange them
            if schedule is not None:
                schedule.step()
            pipe.zero_grad()
            loss = replicas.mean_loss(losses) if pipe.has_last else 0.0  # over every replica
            if pipe.has_last and replicas.replica == 0:
                for key, value in (("loss", loss), ("norm", norm.item()), ("lr", lr)):
                    record[key].append(value)
                print(f"step {step + 1}/{args.steps}  loss {loss:.6f}  grad norm {norm.item():.4f}  "
                      f"lr {lr:.3g}", flush=True)
        if pipe.has_last and pipe.replicas.replica == 0 and args.out:
            tmp = f"{args.out}.tmp{os.getpid()}"  # whole or not at all: a temp file, then a rename
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(record, f)
            os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    sys.exit(main())
