"""Is a stage's planned memory what its rank holds? Each rank's tensors, counted storage by storage.

For each example (the MLP at width 2,048 with 256-sample micro-batches, the U-Net, the GPT-2
example): plan 2 stages with ``autopipe.plan`` (profile measured here), train 3 Adam steps on
2 gloo ranks as ``autopipe train`` does (``build``, then per step ``zero_grad``, ``step``,
``sync_tied_grads`` and the optimizer's step), and count every tensor storage an aten call
makes on the rank from the optimizer's creation on (a ``TorchDispatchMode``; a finalizer on
each storage uncounts it when it is freed). The stages' parameters and buffers, meta tensors
and the trace's fake tensors are left out. It prints each stage's planned memory beyond its
parameters next to its rank's counted peak, and what made the most of that peak; then as many
more steps without the counter, timed, for the plan's predicted step against the measured
median (the slower rank's each step).

Not counted: an embedding's gradient on zero pages (made from an anonymous mapping by
``torch.frombuffer``, no aten call: the GPT-2 rank 0's planned figure holds the rows a step
writes), and the process itself (malloc's holes, the interpreter, torch:
``benchmarks/bench_init_memory.py`` measures resident memory).

``--recompute full`` plans every block that can be recomputed (one region per layer of a
model's repeated layers, [Note: a region per layer] in ``autopipe.partition.costs``);
``--longest-runs`` plans the regions as the longest runs of blocks instead, as before
2026-12-07 (a stage's layers one region), for comparison.

    python -m benchmarks.bench_stage_memory [--only mlp,unet,gpt2,llama] [--microbatches 8] [--steps 3]
                                            [--recompute auto|none|full] [--longest-runs]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensor

import autopipe
from autopipe.profile._peak import PeakBytes
from autopipe.spec import example_target

ROOT = Path(__file__).resolve().parent.parent
MODELS: dict[str, dict[str, Any]] = {
    "mlp": {"in_dim": 256, "hidden": 2048, "batch_size": 256},
    "unet": {},
    "gpt2": {},
    "llama": {},
}
MIB = 2**20


class StorageCounter(PeakBytes):  # type: ignore[no-untyped-call]
    """``PeakBytes`` over real tensors only (not meta, not the trace's fake tensors), which
    also keeps ``at_peak``: the bytes per maker (aten op) held at the peak."""

    def __init__(self, exclude: list[torch.Tensor]) -> None:
        super().__init__(exclude)
        self._made: dict[int, tuple[str, int]] = {}
        self.at_peak: dict[str, int] = {}

    def counts(self, t: torch.Tensor) -> bool:
        return t.device.type != "meta" and not isinstance(t, FakeTensor)

    def made(self, func: Any, key: int, nbytes: int) -> None:
        self._made[key] = (str(func).removeprefix("aten."), nbytes)

    def new_peak(self) -> None:
        by: collections.Counter[str] = collections.Counter()
        for maker, nbytes in self._made.values():
            by[maker] += nbytes
        self.at_peak = dict(by.most_common(6))

    def _freed(self, key: int, nbytes: int) -> None:
        super()._freed(key, nbytes)
        self._made.pop(key, None)


def worker(spec_path: str, knobs: str, plan_path: str, out: str, steps: int) -> int:
    """One rank (``--worker``, under the launcher): train and write its counted peak."""
    from autopipe.runtime import build
    from autopipe.runtime.optim import TrainConfig, make_optimizer

    torch.set_num_threads(1)
    spec = autopipe.load_spec(spec_path, **json.loads(knobs))
    plan = autopipe.Plan.load(plan_path)
    config = TrainConfig(steps=steps, optimizer="adam")
    with build(plan, spec, device="cpu", pin_malloc=config.pin_malloc, pin_cores=config.pin_cores,
               flush_denormal=config.flush_denormal) as pipe:  # as autopipe train builds it
        kept = [*pipe.parameters(), *(b for m in pipe.modules().values() for b in m.buffers())]

        def one_step(step: int, optimizer: Any) -> None:  # as autopipe train runs a step
            inputs, target = pipe.take(*spec.batch(plan.microbatches, step))
            pipe.zero_grad(set_to_none=True)
            pipe.step(inputs, target)
            pipe.sync_tied_grads()
            optimizer.step()

        with StorageCounter(kept) as counter:
            optimizer = make_optimizer(pipe.parameters(), config)  # its states made here: counted
            for step in range(steps):
                one_step(step, optimizer)
        step_s = []  # timed after, without the counter's work on every call
        for step in range(steps, 2 * steps):
            t = time.perf_counter()
            one_step(step, optimizer)
            step_s.append(time.perf_counter() - t)
        report = {"stages": list(pipe.stages), "peak": counter.peak, "at_peak": counter.at_peak,
                  "step_s": step_s}
    Path(out, f"rank{os.environ['RANK']}.json").write_text(json.dumps(report))
    return 0


def bench(name: str, microbatches: int, steps: int, tmp: Path, recompute: str = "auto") -> None:
    """Plan ``name``, train it on 2 ranks, print planned against counted per stage."""
    from autopipe.runtime.launch import launch

    spec_path = f"{ROOT / 'examples' / name}.py:build"
    knobs = MODELS[name]
    spec = autopipe.load_spec(spec_path, **knobs)
    plan = autopipe.plan(spec.model, spec.example_inputs, example_kwargs=spec.example_kwargs, num_stages=2,
                         microbatches=microbatches, profile="measure", loss_fn=spec.loss_fn,
                         target=example_target(spec), recompute=recompute)
    folder = Path(tempfile.mkdtemp(prefix=f"{name}.", dir=tmp))
    plan.save(folder / "plan.json")
    with open(folder / "log.txt", "w") as log:
        result = launch([sys.executable, "-m", "benchmarks.bench_stage_memory", "--worker", spec_path,
                         json.dumps(knobs), str(folder / "plan.json"), str(folder), str(steps)], 2,
                        env={"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}, timeout_s=600,
                        stdout=log, stderr=subprocess.STDOUT)
    if result.code:
        raise RuntimeError(f"{name}: training failed: {(folder / 'log.txt').read_text()[-2000:]}")
    ranks = [json.loads((folder / f"rank{r}.json").read_text()) for r in range(2)]
    slowest = [max(ts) for ts in zip(*(got["step_s"] for got in ranks))]
    predicted, measured = plan.predicted.iteration_s, statistics.median(slowest)
    print(f"{name:5s} step: predicted {predicted * 1e3:.2f} ms, measured median {measured * 1e3:.2f} ms "
          f"(predicted/measured {predicted / measured:.3f}; {len(slowest)} steps after the counted ones)",
          flush=True)
    for got in ranks:
        for s in got["stages"]:
            mem = plan.stages[s].memory
            sent = sum(x.bytes for x in plan.stages[s].sends)
            planned = mem.total - mem.params
            makers = ", ".join(f"{k} {v / MIB:.1f}" for k, v in got["at_peak"].items())
            print(f"{name:5s} stage {s}  sends {sent / MIB:7.3f} MiB  buffers {mem.buffers / MIB:7.2f} MiB  "
                  f"planned {planned / MIB:8.2f} MiB  counted {got['peak'] / MIB:8.2f} MiB  "
                  f"counted/planned {got['peak'] / planned:.3f}   at the peak: {makers}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run it and print the rows."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--only", default=",".join(MODELS))
    ap.add_argument("--microbatches", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--recompute", default="auto", choices=("auto", "none", "full"))
    ap.add_argument("--longest-runs", action="store_true",
                    help="recomputed regions as the longest runs of blocks, as planned before 2026-12-07")
    ap.add_argument("--worker", nargs=5, metavar=("SPEC", "KNOBS", "PLAN", "OUT", "STEPS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        spec_path, knobs, plan_path, out, steps = args.worker
        return worker(spec_path, knobs, plan_path, out, int(steps))
    torch.set_num_threads(1)
    if args.longest_runs:
        from autopipe.partition import planner
        planner.node_layers = lambda *_: {}  # no layers known: regions are the longest runs
    print(f"2 stages, 1f1b, {args.microbatches} micro-batches, Adam, {args.steps} steps on 2 gloo ranks, "
          f"--recompute {args.recompute}{' (longest runs)' if args.longest_runs else ''}; "
          "planned: the plan's stage memory beyond its parameters; counted: the rank's peak of tensor "
          "storages beyond them")
    with tempfile.TemporaryDirectory(prefix="bench_stage_memory.") as d:
        for name in [n for n in args.only.split(",") if n]:
            bench(name, args.microbatches, args.steps, Path(d), args.recompute)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
