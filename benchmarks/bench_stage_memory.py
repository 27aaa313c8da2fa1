"""Is a stage's planned memory what its rank holds? Each rank's tensors, counted storage by storage.

For each example (the MLP at width 2,048 with 256-sample micro-batches, the U-Net, the GPT-2
example): plan 2 stages with ``autopipe.plan`` (profile measured here), train 3 Adam steps on
2 gloo ranks as ``autopipe train`` does (``build``, then per step ``zero_grad``, ``step``,
``sync_tied_grads`` and the optimizer's step), and count every tensor storage an aten call
makes on the rank from the optimizer's creation on (a ``TorchDispatchMode``; a finalizer on
each storage uncounts it when it is freed). The stages' parameters and buffers, meta tensors
and the trace's fake tensors are left out. It prints each stage's planned memory beyond its
parameters next to its rank's counted peak, and what made the most of that peak.

Not counted: an embedding's gradient on zero pages (made from an anonymous mapping by
``torch.frombuffer``, no aten call: the GPT-2 rank 0's planned figure holds the rows a step
writes), and the process itself (malloc's holes, the interpreter, torch:
``benchmarks/bench_init_memory.py`` measures resident memory).

    python -m benchmarks.bench_stage_memory [--only mlp,unet,gpt2] [--microbatches 8] [--steps 3]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import weakref
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import autopipe
from autopipe.profile._saved import storage_key
from autopipe.spec import example_target

ROOT = Path(__file__).resolve().parent.parent
MODELS: dict[str, dict[str, Any]] = {
    "mlp": {"in_dim": 256, "hidden": 2048, "batch_size": 256},
    "unet": {},
    "gpt2": {},
}
MIB = 2**20


class StorageCounter(TorchDispatchMode):  # type: ignore[misc]
    """Within it, ``peak`` is the most bytes of tensor storages that aten calls made and held at
    once, and ``at_peak`` the bytes per maker (aten op) at that moment. Storages of
    ``exclude``, meta tensors and fake tensors are not counted."""

    def __init__(self, exclude: list[torch.Tensor]) -> None:
        super().__init__()
        self._held = {storage_key(t) for t in exclude}
        self._made: dict[int, tuple[str, int]] = {}
        self.live = self.peak = 0
        self.at_peak: dict[str, int] = {}

    def _freed(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self._held.discard(key)
        self._made.pop(key, None)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        grew = False
        for t in tree_leaves(out):
            if (not isinstance(t, torch.Tensor) or t.device.type == "meta"
                    or type(t).__name__ == "FakeTensor"):
                continue
            key = storage_key(t)
            if key in self._held:
                continue
            storage = t.untyped_storage()
            nbytes = int(storage.nbytes())
            self._held.add(key)
            self._made[key] = (str(func).removeprefix("aten."), nbytes)
            self.live += nbytes
            weakref.finalize(storage, self._freed, key, nbytes)
            if self.live > self.peak:
                self.peak, grew = self.live, True
        if grew:
            by: collections.Counter[str] = collections.Counter()
            for maker, nbytes in self._made.values():
                by[maker] += nbytes
            self.at_peak = dict(by.most_common(6))
        return out


def worker(spec_path: str, knobs: str, plan_path: str, out: str, steps: int) -> int:
    """One rank (``--worker``, under the launcher): train and write its counted peak."""
    from autopipe.runtime import build
    from autopipe.runtime.optim import TrainConfig, make_optimizer

    torch.set_num_threads(1)
    spec = autopipe.load_spec(spec_path, **json.loads(knobs))
    plan = autopipe.Plan.load(plan_path)
    config = TrainConfig(steps=steps, optimizer="adam")
    with build(plan, spec, device="cpu") as pipe:
        kept = [*pipe.parameters(), *(b for m in pipe._pipeline.modules() for b in m.buffers())]
        with StorageCounter(kept) as counter:
            optimizer = make_optimizer(pipe.parameters(), config)
            assert optimizer is not None
            for step in range(steps):
                inputs, target = spec.batch(plan.microbatches, step)
                pipe.zero_grad(set_to_none=True)
                pipe.step(inputs, target)
                pipe.sync_tied_grads()
                optimizer.step()
        report = {"stages": list(pipe.stages), "peak": counter.peak, "at_peak": counter.at_peak}
    Path(out, f"rank{os.environ['RANK']}.json").write_text(json.dumps(report))
    return 0


def bench(name: str, microbatches: int, steps: int, tmp: Path) -> None:
    """Plan ``name``, train it on 2 ranks, print planned against counted per stage."""
    from autopipe.runtime.launch import launch

    spec_path = f"{ROOT / 'examples' / name}.py:build"
    knobs = MODELS[name]
    spec = autopipe.load_spec(spec_path, **knobs)
    plan = autopipe.plan(spec.model, spec.example_inputs, example_kwargs=spec.example_kwargs, num_stages=2,
                         microbatches=microbatches, profile="measure", loss_fn=spec.loss_fn,
                         target=example_target(spec))
    folder = Path(tempfile.mkdtemp(prefix=f"{name}.", dir=tmp))
    plan.save(folder / "plan.json")
    with open(folder / "log.txt", "w") as log:
        result = launch([sys.executable, "-m", "benchmarks.bench_stage_memory", "--worker", spec_path,
                         json.dumps(knobs), str(folder / "plan.json"), str(folder), str(steps)], 2,
                        env={"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}, timeout_s=600,
                        stdout=log, stderr=subprocess.STDOUT)
    if result.code:
        raise RuntimeError(f"{name}: training failed: {(folder / 'log.txt').read_text()[-2000:]}")
    for r in range(2):
        got = json.loads((folder / f"rank{r}.json").read_text())
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
    ap.add_argument("--worker", nargs=5, metavar=("SPEC", "KNOBS", "PLAN", "OUT", "STEPS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        spec_path, knobs, plan_path, out, steps = args.worker
        return worker(spec_path, knobs, plan_path, out, int(steps))
    torch.set_num_threads(1)
    print(f"2 stages, 1f1b, {args.microbatches} micro-batches, Adam, {args.steps} steps on 2 gloo ranks; "
          "planned: the plan's stage memory beyond its parameters; counted: the rank's peak of tensor "
          "storages beyond them")
    with tempfile.TemporaryDirectory(prefix="bench_stage_memory.") as d:
        for name in [n for n in args.only.split(",") if n]:
            bench(name, args.microbatches, args.steps, Path(d))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
