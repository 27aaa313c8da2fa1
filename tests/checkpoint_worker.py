"""One rank of a checkpoint test job: train with saves, resume from the middle, evaluate.

Run by tests/test_runtime_checkpoint.py as ``python -m tests.checkpoint_worker OUT_DIR CASE...``
under the launcher; each case's plan is ``OUT_DIR/CASE.plan.json``. Per case:

1. ``train`` 4 steps straight through, saving every 2 steps into ``OUT_DIR/CASE.ckpt``;
2. ``train`` a fresh copy of the model resumed from ``CASE.ckpt/step-000002`` to step 4;
3. ``build`` a third copy, load the newest checkpoint and evaluate step 5's batch.

Each rank saves the losses, its trained tensors and (the last stage's) outputs in
``OUT_DIR/CASE.rankR.pt``. With ``CRASH_IN_SAVE=RANK:STEP`` in the environment, that
rank dies (``os._exit(13)``) in the save of that step, after writing its tensors and
before the checkpoint is complete; only step 1 runs then.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.filesystem import FileSystemWriter

from autopipe.plan_format import Plan
from autopipe.runtime import TrainConfig, build, load_checkpoint, train

from .runtime_cases import CASES, trained_state

STEPS, EVERY = 4, 2


def _die_in_save(rank: int, step: int) -> None:
    """Make ``rank`` exit mid-save of ``step``: its shard is written, the checkpoint is not."""
    write = FileSystemWriter.write_data

    def write_then_die(self: Any, plan: Any, planner: Any) -> Any:
        future = write(self, plan, planner)
        if dist.get_rank() == rank and f"step-{step:06d}" in str(self.path):
            future.wait()
            os._exit(13)
        return future

    FileSystemWriter.write_data = write_then_die  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    out = Path(argv[0])
    torch.set_num_threads(1)
    crash = os.environ.get("CRASH_IN_SAVE")
    if crash:
        rank, step = map(int, crash.split(":"))
        _die_in_save(rank, step)
    dist.init_process_group("gloo")
    for name in argv[1:]:
        case = CASES[name]
        plan = Plan.load(out / f"{name}.plan.json")
        ckpt = out / f"{name}.ckpt"
        config: dict[str, Any] = dict(steps=STEPS, lr=case.lr, optimizer="adam", timeout_s=60, device="cpu")
        straight = train(case.spec(), plan, TrainConfig(**config, save=str(ckpt), save_every=EVERY),
                         log=lambda s: None)
        if crash:
            continue
        resumed = train(case.spec(), plan, TrainConfig(**config, resume=str(ckpt / f"step-{EVERY:06d}")),
                        log=lambda s: None)
        spec = case.spec()
        with build(plan, spec, device="cpu") as pipe:
            info = load_checkpoint(ckpt, pipe)
            inputs, target = spec.batch(plan.microbatches, STEPS)
            seen = pipe.evaluate(inputs, target)
        output = getattr(seen.output, "logits", seen.output)
        state = trained_state(straight.modules.values(), pipe.prepared.graph)
        torch.save({"straight": straight.losses, "resumed": resumed.losses, "start": resumed.start_step,
                    "loaded_step": info.step, "state": state, "output": output,
                    "eval_losses": [x.item() for x in seen.losses]},
                   out / f"{name}.rank{dist.get_rank()}.pt")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    sys.exit(main(sys.argv[1:]))
