"""Two-stage pipeline training on CUDA: a smoke test of the NCCL path, checked against the CPU.

Plans a small GPT-2 for 2 stages with autopipe's planner, then runs ``autopipe train``
on CUDA: with two or more GPUs as 2 ranks over NCCL (1F1B); with one GPU as one rank
that holds both stages (interleaved 1F1B; NCCL cannot put two ranks on one GPU).
Prints the ranks' output (per-step loss and time, peak CUDA memory per rank next to
the plan's prediction) and checks the losses against the same training in one CPU
process.

    python -m benchmarks.runtime_cuda [--steps 5] [--device cuda] [--ranks 1|2]

``--device cpu`` runs the same script on CPU ranks (gloo), where there is no GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch

import autopipe
from autopipe.runtime import TrainConfig, launch, reference_train

ROOT = Path(__file__).resolve().parent.parent
SPEC = "examples/gpt2.py:build"
KNOBS = {"n_layer": 4, "n_embd": 128, "n_head": 4, "vocab_size": 8192, "seq_len": 64, "batch_size": 4}


def run(steps: int, device: str, out: Path, ranks: int | None = None) -> tuple[int, list[float], str]:
    """Plan, train on ``device`` with ``ranks`` processes (default: 2 where there are two GPUs
    or on CPU, else 1); return (exit code, the losses printed, the ranks' output)."""
    spec = autopipe.load_spec(str(ROOT / SPEC), **KNOBS)
    plan = autopipe.plan(spec.model, spec.example_inputs, num_stages=2, microbatches=4, profile="measure")
    if ranks is None:
        ranks = 2 if device == "cpu" or torch.cuda.device_count() >= 2 else 1
    if ranks == 1:  # both stages on one GPU, one process
        plan = dataclasses.replace(plan, schedule="interleaved-1f1b", stages=tuple(
            dataclasses.replace(s, rank=0) for s in plan.stages))
    path = out / "plan.json"
    plan.save(path)
    cmd = [sys.executable, "-m", "autopipe", "train", SPEC, "--plan", str(path), "--steps", str(steps),
           "--device", device, "--optimizer", "sgd-momentum", "--lr", "0.05", "--timeout", "120",
           *[f"--spec-arg={k}={v}" for k, v in KNOBS.items()]]
    log = out / "ranks.txt"
    with open(log, "w") as f:
        result = launch(cmd, ranks, env={"PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))}, stdout=f, stderr=subprocess.STDOUT,
                        timeout_s=500, log=f)
    text = log.read_text()
    losses = [float(ln.split()[3]) for ln in text.splitlines() if ln.startswith("step ")]
    return result.code, losses, text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--ranks", type=int, choices=(1, 2), default=None,
                   help="processes (default: 2 with two GPUs or on CPU, else 1 holding both stages)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to do (use --device cpu for the CPU path)")
        return 0
    with tempfile.TemporaryDirectory() as d:
        code, losses, text = run(args.steps, args.device, Path(d), args.ranks)
    print(text, end="")
    if code:
        print(f"FAILED: ranks exited with code {code}")
        return 1
    spec = autopipe.load_spec(str(ROOT / SPEC), **KNOBS)
    graph = autopipe.trace(spec.model, spec.example_inputs)
    ref = reference_train(spec, graph, 4, TrainConfig(steps=args.steps, lr=0.05, optimizer="sgd-momentum"))
    worst = max(abs(a - b) for a, b in zip(losses, ref)) if len(losses) == len(ref) else float("inf")
    print(f"losses on {args.device} vs one CPU process: max |difference| {worst:.2e} over {len(ref)} steps")
    return 0 if worst < 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
