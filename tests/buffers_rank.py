"""One rank of ``tests/test_runtime_buffers.py``: trains two steps of a plan and writes the
bytes its stages' receive buffers hold, and those of the batch it takes (``python
tests/buffers_rank.py SPEC PLAN OUT``, under the launcher)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

import autopipe
from autopipe.runtime import build


def _bytes(infos: dict[int, tuple[object, ...]]) -> int:
    """Distinct storages' bytes of the receive buffers in a stage's ``*_recv_info``."""
    seen: dict[int, int] = {}
    for per_mb in infos.values():
        for info in per_mb:
            t = getattr(info, "buffer", None)
            if isinstance(t, torch.Tensor):
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def main() -> int:
    spec_path, plan_path, out = sys.argv[1:4]
    torch.set_num_threads(1)
    plan = autopipe.Plan.load(plan_path)
    spec = autopipe.load_spec(spec_path)
    with build(plan, spec, device="cpu") as pipe:
        for step in range(2):
            inputs, target = pipe.take(*spec.batch(plan.microbatches, step))  # as autopipe train
            pipe.step(inputs, target)
            pipe.zero_grad()
        held = {s.stage_index: _bytes(s.args_recv_info) + _bytes(s.grad_recv_info)
                for s in pipe._pipeline.stages}
        taken = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                 for t in (*(inputs or ()), target) if isinstance(t, torch.Tensor)}
    Path(out, f"rank{os.environ['RANK']}.json").write_text(json.dumps(
        {"buffers": held, "batch": sum(taken.values()), "has": [inputs is not None, target is not None]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
