"""Host memory per rank when a meta-built model trains from ``--init``: each rank holds its stages only.

A Hugging Face Llama (``examples/llama.py``, random init) is built once on the CPU in a
subprocess and saved as one ``.safetensors`` file; then, built on the meta device, it is
planned into 2 stages (estimated profile) and trained for a few Adam steps on 2 gloo ranks
from that file (``autopipe.runtime.build(plan, spec, init=PATH)`` and the calls ``autopipe
train --init`` makes each step). Each rank reports its peak resident memory (``VmHWM``):
at the end, before its stages' tensors existed (the process: Python, torch, transformers,
the meta model traced), after materialising them, and after the first step's forward and
backward and its optimizer step. Last, one
process trains one step of the same model loaded from the same file, for its first loss and
its own peak.

It prints each rank's peak next to the one-process size of parameters + gradients + Adam
state (4 × the fp32 parameters; target: each rank ≤ 60% of it), and the first loss of the
pipeline next to the one process's (they must be equal).

    python -m benchmarks.bench_init_memory [--layers 16] [--hidden 1024] [--intermediate 2816]
        [--heads 16] [--kv-heads 4] [--vocab 32000] [--seq 64] [--microbatches 2] [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

import autopipe
from autopipe._units import parse_size
from autopipe.errors import InfeasiblePlanError
from autopipe.plan_format import Device
from autopipe.runtime.launch import launch
from autopipe.runtime.optim import TrainConfig, make_optimizer
from autopipe.runtime.pipe import build
from autopipe.runtime.prepare import prepare
from autopipe.runtime.reference import reference_train
from autopipe.spec import example_target

ROOT = Path(__file__).resolve().parent.parent
SPEC = f"{ROOT / 'examples' / 'llama.py'}:build"
TARGET = 0.60
"""A rank's peak resident memory, as a fraction of one process's parameters + gradients + Adam."""


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def _peak_rss() -> int:
    """This process's peak resident memory so far, bytes: the kernel's ``VmHWM``.

    Not ``ru_maxrss``: Linux carries it over ``exec`` from the process that forked, so a
    rank started by the benchmark (which holds ~0.46 GB after planning) reported that as its
    peak before any weight existed (a child of a 513 MiB process: ``ru_maxrss`` 513 MiB,
    ``VmHWM`` 13 MiB). ``ru_maxrss`` (KiB) only where ``/proc`` is missing.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _knobs(args: argparse.Namespace) -> dict[str, Any]:
    return dict(num_hidden_layers=args.layers, hidden_size=args.hidden, intermediate_size=args.intermediate,
                num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, vocab_size=args.vocab,
                seq_len=args.seq, batch_size=1)


def _save_weights(work: Path) -> None:
    """Subprocess: build the model on the CPU (seed 0) and save it; the memory goes with the process."""
    knobs = json.loads((work / "config.json").read_text())["knobs"]
    model = autopipe.load_spec(SPEC, **knobs).model
    save_model(model, str(work / "weights.safetensors"))


def _rank(work: Path) -> None:
    """One rank: the meta-built model from the file, trained with the calls ``autopipe train --init``
    makes (``build(init=...)``, then per step ``zero_grad``, ``step``, ``sync_tied_grads`` and the
    optimizer's step), noting the peak after each phase of the first step."""
    config = json.loads((work / "config.json").read_text())
    spec = autopipe.load_spec(SPEC, **config["knobs"], device="meta")
    plan = autopipe.Plan.load(work / "plan.json")
    prepared = prepare(spec, plan, int(os.environ["WORLD_SIZE"]))
    train_config = TrainConfig(steps=config["steps"], lr=config["lr"], optimizer="adam", device="cpu",
                               init=str(work / "weights.safetensors"), pin_malloc=config["pin_malloc"])
    phases = {"before": _peak_rss()}
    losses: list[float] = []
    step_s: list[float] = []
    with build(plan, spec, device="cpu", init=train_config.init, prepared=prepared,
               pin_malloc=train_config.pin_malloc, pin_cores=train_config.pin_cores,
               flush_denormal=train_config.flush_denormal) as pipe:
        phases["materialised"] = _peak_rss()
        optimizer = make_optimizer(pipe.parameters(), train_config)
        assert optimizer is not None
        for step in range(train_config.steps):
            inputs, target = pipe.take(*spec.batch(plan.microbatches, step))
            t = time.perf_counter()
            pipe.zero_grad(set_to_none=True)
            out = pipe.step(inputs, target)
            phases.setdefault("forward_backward", _peak_rss())
            pipe.sync_tied_grads()
            optimizer.step()
            phases.setdefault("optimizer_step", _peak_rss())
            step_s.append(time.perf_counter() - t)
            if out:
                losses.append(torch.stack(out).mean().item())
                print(f"step {step + 1}/{train_config.steps}  loss {losses[-1]:.6f}  time {step_s[-1]:.1f} s",
                      flush=True)
        report = {"rank": pipe.rank, "stages": list(pipe.stages), "peak": _peak_rss(),
                  "before": phases["before"], "phases": phases,
                  "params": sum(p.numel() * p.element_size() for p in pipe.parameters()),
                  "losses": losses, "step_s": step_s}
    (work / f"rank{report['rank']}.json").write_text(json.dumps(report))


def _one_process(work: Path) -> None:
    """One process: the CPU-built model loaded from the file, one step as the pipeline runs it."""
    config = json.loads((work / "config.json").read_text())
    spec = autopipe.load_spec(SPEC, **config["knobs"])
    load_model(spec.model, str(work / "weights.safetensors"))
    graph = autopipe.trace(spec.model, spec.example_inputs)
    losses = reference_train(spec, graph, config["microbatches"],
                             TrainConfig(steps=1, lr=config["lr"], optimizer="adam"))
    (work / "one.json").write_text(json.dumps({"losses": losses, "peak": _peak_rss()}))


def _child(mode: str, work: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRANSFORMERS_VERBOSITY": "error"}
    subprocess.run([sys.executable, "-m", "benchmarks.bench_init_memory", mode, str(work)],
                   check=True, cwd=ROOT, env=env)


def _memory_balanced_plan(spec: autopipe.ModelSpec, args: argparse.Namespace) -> autopipe.Plan:
    """The ILP plan for 2 CPU devices (the ranks step Adam fused, with no temporaries: the
    plan charges none), with the loss (as ``autopipe plan`` makes it: the last stage is
    charged its scratch), under the smallest per-stage memory limit that a split fits, to
    0.2% (found by bisection from half the model's planned memory), as a user short of
    memory would plan; or ``--memory-limit``."""
    target = example_target(spec)

    def plan(limit: int | str | None) -> autopipe.Plan:
        memory = 0 if limit is None else parse_size(limit)
        return autopipe.plan(spec.model, spec.example_inputs, num_stages=2, microbatches=args.microbatches,
                             profile="estimate", loss_fn=spec.loss_fn, target=target,
                             devices=[Device(name=f"cpu:{i}", memory=memory) for i in range(2)])

    if args.memory_limit is not None:
        return plan(args.memory_limit)
    free = plan(None)
    low = sum(s.memory.total for s in free.stages) / 2  # no split fits under it
    high = low * 1.05
    while True:
        try:
            best = plan(int(high))
            break
        except InfeasiblePlanError:
            low, high = high, high * 1.05
    while high / low > 1.002:
        middle = (low + high) / 2
        try:
            best, high = plan(int(middle)), middle
        except InfeasiblePlanError:
            low = middle
    return best


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Save, plan, train on 2 ranks, train one step in one process; print and return the figures."""
    knobs = _knobs(args)
    (work / "config.json").write_text(json.dumps({"knobs": knobs, "steps": args.steps, "lr": args.lr,
                                                  "microbatches": args.microbatches,
                                                  "pin_malloc": args.pin_malloc}))
    t = time.perf_counter()
    _child("--save", work)
    spec = autopipe.load_spec(SPEC, **knobs, device="meta")
    params = sum(p.numel() * p.element_size() for p in spec.model.parameters())
    one_state = 4 * params  # fp32 parameters, gradients, Adam's two moments
    print(f"llama: {args.layers} layers, hidden {args.hidden}, intermediate {args.intermediate}, vocab "
          f"{args.vocab}: {params / 4e6:.1f} M parameters, {_gb(params)} fp32, saved to "
          f"{work / 'weights.safetensors'} in {time.perf_counter() - t:.1f} s", flush=True)
    plan = _memory_balanced_plan(spec, args)
    plan.save(work / "plan.json")
    print(f"plan: 2 stages, {plan.schedule}, {plan.microbatches} micro-batches, per-stage limit "
          f"{_gb(plan.devices[0].memory)}: parameters "
          f"{' | '.join(_gb(s.memory.params) for s in plan.stages)}, planned memory "
          f"{' | '.join(_gb(s.memory.total) for s in plan.stages)}", flush=True)
    env = {"PYTHONPATH": str(ROOT), "TRANSFORMERS_VERBOSITY": "error"}
    t = time.perf_counter()
    done = launch([sys.executable, "-m", "benchmarks.bench_init_memory", "--rank", str(work)], 2,
                  env=env, timeout_s=args.timeout)
    if done.code:
        raise SystemExit(f"a rank failed (exit codes {list(done.codes)})")
    train_s = time.perf_counter() - t
    _child("--one-process", work)
    ranks = [json.loads((work / f"rank{r}.json").read_text()) for r in range(2)]
    one = json.loads((work / "one.json").read_text())
    first = next(r["losses"][0] for r in ranks if r["losses"])

    print(f"\n2 ranks, gloo, {args.steps} Adam steps, {args.microbatches} micro-batches of "
          f"1 × {args.seq} tokens, from --init (launch to exit {train_s:.1f} s)")
    print(f"one process, parameters + gradients + Adam state: {_gb(one_state)} (4 × {_gb(params)})")
    worst = 0.0
    for r in ranks:
        share = r["peak"] / one_state
        worst = max(worst, share)
        print(f"  rank {r['rank']} (stage {', '.join(map(str, r['stages']))}): peak resident "
              f"{_gb(r['peak'])} = {share:.0%} of it; its parameters {_gb(r['params'])} "
              f"(× 4 = {_gb(4 * r['params'])}); peak before materialising {_gb(r['before'])}, "
              f"after it {_gb(r['phases']['materialised'])}, after step 1's forward and backward "
              f"{_gb(r['phases']['forward_backward'])}, after its optimizer step "
              f"{_gb(r['phases']['optimizer_step'])}")
    print(f"  one process, same weights, one step: peak resident {_gb(one['peak'])} "
          f"({one['peak'] / one_state:.0%})")
    print(f"target: every rank ≤ {TARGET:.0%}: {'met' if worst <= TARGET else 'missed'} "
          f"(largest {worst:.0%})")
    timed = [t for r in ranks if r["losses"] for t in r["step_s"][1:]] or [0.0]
    print(f"step: predicted {plan.predicted.iteration_s:.3f} s (the plan's estimated profile, "
          f"not this CPU's), measured median {statistics.median(timed):.3f} s after the first")
    equal = abs(first - one["losses"][0]) <= 1e-5 * max(1.0, abs(first))
    print(f"first loss: pipeline {first:.6f}, one process {one['losses'][0]:.6f}: "
          f"{'equal' if equal else 'DIFFERENT'}")
    return {"params": params, "one_state": one_state, "ranks": ranks, "one_process": one,
            "first_loss_equal": equal, "worst_share": worst}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("--save", "--rank", "--one-process"):
        {"--save": _save_weights, "--rank": _rank, "--one-process": _one_process}[argv[0]](Path(argv[1]))
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--intermediate", type=int, default=2816)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--seq", type=int, default=64, help="tokens per micro-batch of one sequence")
    p.add_argument("--microbatches", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--memory-limit", default=None,
                   help="per-stage limit given to the planner (default: just above half the model's)")
    p.add_argument("--no-pin-malloc", dest="pin_malloc", action="store_false",
                   help="leave glibc's malloc as it is in the ranks (autopipe train --no-pin-malloc)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds the ranks may take")
    p.add_argument("--out", type=Path, default=None, help="keep the files here (default: a temp dir)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_init_memory_") as tmp:
        work = args.out or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        figures = run(args, work)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0 if figures["first_loss_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
