"""One rank of tests/test_runtime_init_constants.py's job: train zoo models built on meta whose
forward makes tensors from Python values ([Note: constants made while tracing on meta]), each
from the CPU-built model's weights, and save its losses and stage state.

Run as ``python -m tests.init_constants_worker OUT_DIR NAME...`` under the launcher, with one
``PYTHONHASHSEED`` for both ranks: each rank plans each model itself (Gemma 3n's traced order
follows the string hashes: ``HASH_ORDERED`` in tests/zoo.py); its weights are ``OUT_DIR/NAME.pt``
(made by the test).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import PreTrainedModel

from autopipe import ModelSpec, trace
from autopipe.runtime.optim import TrainConfig
from autopipe.runtime.train import TrainResult, prepare, train
from autopipe.trace import Graph

from .runtime_plans import hand_plan
from .runtime_worker import run_cases
from .zoo import ZOO

STEPS, MICROBATCHES, LR = 2, 2, 0.05


def meta_spec(name: str) -> ModelSpec:
    """The zoo's ``name`` built on meta, initialised (where no file is given) as transformers does."""
    spec = ZOO[name]()
    with torch.device("meta"):
        model = ZOO[name]().model
    outer = next(m for m in model.modules() if isinstance(m, PreTrainedModel))
    return dataclasses.replace(spec, model=model, init_weights=outer._init_weights)


def config(out: Path, name: str) -> TrainConfig:
    return TrainConfig(steps=STEPS, lr=LR, optimizer="sgd-momentum", timeout_s=60, device="cpu",
                       init=str(out / f"{name}.pt"))


def _train_case(out: Path, name: str) -> tuple[TrainResult, Graph]:
    spec = meta_spec(name)
    graph = trace(spec.model, spec.example_inputs)
    plan = hand_plan(graph, 2, microbatches=MICROBATCHES)
    prepared = prepare(spec, plan, dist.get_world_size(), graph)
    return train(spec, plan, config(out, name), prepared=prepared, log=lambda s: None), prepared.graph


if __name__ == "__main__":
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    sys.exit(run_cases(sys.argv[1:], _train_case))
