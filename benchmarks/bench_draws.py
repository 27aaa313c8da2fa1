"""What seeded random draws cost a step: GPT-2 with dropout, forward and backward, seeded or not.

The example GPT-2 (``examples/gpt2.py``) with dropout is traced, its random nodes seeded
([Note: random draws per node and micro-batch] in ``autopipe/runtime/draws.py``), and one
micro-batch's forward and backward timed in turns: once under a step's context (each
random node saves the process's generator, seeds its own and restores it) and once outside
one (the same nodes draw from the process's generator). Prints the medians and their ratio.

    python -m benchmarks.bench_draws [--dropout 0.1] [--runs 40]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import autopipe
from autopipe.runtime.draws import drawing, seeded_draws


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--runs", type=int, default=40)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    spec = autopipe.load_spec("examples/gpt2.py:build", dropout=args.dropout)
    graph = autopipe.trace(spec.model, spec.example_inputs)
    inputs, target = spec.batch(1, 0)
    flat = graph.flat_inputs(tuple(inputs), spec.example_kwargs)

    def step() -> float:
        t = time.perf_counter()
        spec.loss_fn(graph.unflatten_output(graph.gm(*flat)), target).backward()
        return time.perf_counter() - t

    plain: list[float] = []
    seeded: list[float] = []
    with seeded_draws(graph.gm) as n:
        for i in range(args.runs):
            plain.append(step())
            with drawing(0, 1, i):
                seeded.append(step())
    a, b = statistics.median(plain), statistics.median(seeded)
    print(f"gpt2, dropout {args.dropout}: {n} seeded random nodes; forward + backward of one micro-batch, "
          f"median of {args.runs}: process generator {a * 1e3:.2f} ms, seeded {b * 1e3:.2f} ms, "
          f"ratio {b / a:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
