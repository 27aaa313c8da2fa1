"""One rank of a runtime test job: train each named case and save its losses and stage state.

Run by the tests as ``python -m tests.runtime_worker OUT_DIR CASE...`` under the launcher.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from autopipe.runtime.optim import TrainConfig
from autopipe.runtime.tied import canonical_names
from autopipe.runtime.train import prepare, train

from .runtime_cases import CASES


def main(argv: list[str]) -> int:
    out = Path(argv[0])
    torch.set_num_threads(1)
    if os.environ.get("AUTOPIPE_TEST_NO_TIED_SYNC"):  # the negative control: copies drift
        from autopipe.runtime.tied import TiedParams

        TiedParams.all_reduce_grads = lambda self: None  # type: ignore[method-assign]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    for name in argv[1:]:
        case = CASES[name]
        spec, graph, plan = case.build()
        config = TrainConfig(steps=case.steps, lr=case.lr, optimizer=case.optimizer, timeout_s=60)
        prepared = prepare(spec, plan, dist.get_world_size(), graph)
        result = train(spec, plan, config, prepared=prepared, log=lambda s: None)
        canonical = canonical_names(graph)
        state = {}
        for module in result.modules.values():
            for k, v in [*module.named_parameters(remove_duplicate=False), *module.named_buffers()]:
                state[canonical.get(k, k)] = v.detach().cpu().clone()
        torch.save({"losses": result.losses, "state": state, "stages": result.stages},
                   out / f"{name}.rank{rank}.pt")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    sys.exit(main(sys.argv[1:]))
