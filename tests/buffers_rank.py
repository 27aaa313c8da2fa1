"""One rank of ``tests/test_runtime_buffers.py``: trains two steps of a plan, counting the
storages of the receive buffers its stages make ([Note: receive buffers made when needed] in
``autopipe._torch_pipelining``) from their making until they are freed, and writes the most
alive at once, what the stages still hold after the steps, and the bytes of the batch it
takes (``python tests/buffers_rank.py SPEC PLAN OUT``, under the launcher)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

import autopipe
from autopipe import _torch_pipelining
from autopipe.profile._peak import PeakBytes
from autopipe.runtime import build


class Received(PeakBytes):  # type: ignore[misc]
    """Counts only the storages made while a stage makes its receive buffers."""

    def __init__(self) -> None:
        super().__init__()
        self.on = False

    def counts(self, t: torch.Tensor) -> bool:
        return self.on and t.device.type != "meta"


def _held(infos: dict[int, tuple[object, ...]]) -> int:
    """Bytes of the real (not placeholder) buffers in a stage's ``*_recv_info``."""
    return sum(t.untyped_storage().nbytes() for per_mb in infos.values() for info in per_mb
               if isinstance(t := getattr(info, "buffer", None), torch.Tensor) and not t.is_meta)


def main() -> int:
    spec_path, plan_path, out = sys.argv[1:4]
    torch.set_num_threads(1)
    plan = autopipe.Plan.load(plan_path)
    spec = autopipe.load_spec(spec_path)
    counter = Received()
    place = _torch_pipelining._placed

    def placed(infos: Any, device: torch.device) -> None:
        counter.on = True
        try:
            place(infos, device)
        finally:
            counter.on = False

    _torch_pipelining._placed = placed  # type: ignore[assignment]
    with build(plan, spec, device="cpu") as pipe:
        with counter:
            for step in range(2):
                inputs, target = pipe.take(*spec.batch(plan.microbatches, step))  # as autopipe train
                pipe.step(inputs, target)
                pipe.zero_grad()
        held = {s.stage_index: _held(s.args_recv_info) + _held(s.grad_recv_info) for s in pipe._pipeline.stages}
        taken = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                 for t in (*(inputs or ()), target) if isinstance(t, torch.Tensor)}
    Path(out, f"rank{os.environ['RANK']}.json").write_text(json.dumps(
        {"peak": counter.peak, "held": held, "batch": sum(taken.values()),
         "has": [inputs is not None, target is not None]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
