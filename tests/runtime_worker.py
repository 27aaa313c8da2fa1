"""One rank of a runtime test job: train each named case and save its losses and stage state.

Cases are those of tests/runtime_cases.py and the model zoo's (tests/zoo.py).

Run by the tests as ``python -m tests.runtime_worker OUT_DIR CASE...`` under the launcher;
each case's plan is ``OUT_DIR/CASE.plan.json`` (made once, by the test).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from autopipe import trace
from autopipe.plan_format import Plan
from autopipe.runtime.optim import TrainConfig
from autopipe.runtime.tied import TiedParams
from autopipe.runtime.train import TrainResult, prepare, train
from autopipe.trace import Graph

from .runtime_cases import CASES, trained_state
from .zoo import LOSS_READS_ALL, ZOO_CASES


def run_cases(argv: list[str], train_case: Callable[[Path, str], tuple[TrainResult, Graph]]) -> int:
    """Join the gloo job, train each case of ``argv[1:]`` with ``train_case(out, name)`` (which
    returns the rank's result and the graph it was split from) and save its losses and stage
    state to ``OUT/CASE.rankR.pt``."""
    out = Path(argv[0])
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    for name in argv[1:]:
        result, graph = train_case(out, name)
        state = trained_state(result.modules.values(), graph)
        torch.save({"losses": result.losses, "state": state, "stages": result.stages,
                    "optimizer_params": result.optimizer_params, "optimizer_bytes": result.optimizer_bytes},
                   out / f"{name}.rank{rank}.pt")
    dist.destroy_process_group()
    return 0


def _train_case(out: Path, name: str) -> tuple[TrainResult, Graph]:
    case = {**CASES, **ZOO_CASES, LOSS_READS_ALL.name: LOSS_READS_ALL}[name]
    spec = case.spec()
    graph = trace(spec.model, spec.example_inputs, spec.example_kwargs)
    plan = Plan.load(out / f"{name}.plan.json")
    config = TrainConfig(steps=case.steps, lr=case.lr, optimizer=case.optimizer, timeout_s=60,
                         device="cpu")  # the plans are made for GPUs (estimated on an H100)
    prepared = prepare(spec, plan, dist.get_world_size(), graph)
    sync = TiedParams.all_reduce_grads
    if not case.tied_sync:  # the negative control: the copies of tied weights drift
        TiedParams.all_reduce_grads = lambda self: None  # type: ignore[method-assign]
    try:
        result = train(spec, plan, config, prepared=prepared, log=lambda s: None)
    finally:
        TiedParams.all_reduce_grads = sync  # type: ignore[method-assign]
    return result, graph


if __name__ == "__main__":
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    sys.exit(run_cases(sys.argv[1:], _train_case))
