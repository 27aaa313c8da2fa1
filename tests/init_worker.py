"""One rank of a meta-build test job: train each named case from a meta-built model and save its
losses and stage state (tests/test_runtime_init.py).

Run as ``python -m tests.init_worker OUT_DIR CASE...`` under the launcher; each case's plan is
``OUT_DIR/CASE.plan.json`` and its weights file, if it has one, ``OUT_DIR/<file>`` (both made by
the test).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch.distributed as dist

from autopipe import ModelSpec
from autopipe.plan_format import Plan
from autopipe.runtime.optim import TrainConfig
from autopipe.runtime.train import TrainResult, prepare, train
from autopipe.trace import Graph

from .conftest import example_spec
from .runtime_cases import TINY
from .runtime_worker import run_cases


@dataclass(frozen=True)
class InitCase:
    """A meta-built example trained from a weights file (``init``) or from its initialiser."""

    name: str
    example: str
    init: str | None
    """File name under the job folder, or None: the spec's per-module initialisation."""
    optimizer: str = "sgd-momentum"
    lr: float = 0.05
    steps: int = 3
    microbatches: int = 4

    def spec(self, device: str = "meta") -> ModelSpec:
        return example_spec(self.example, **{**TINY[self.example], "device": device})

    def config(self, out: Path) -> TrainConfig:
        return TrainConfig(steps=self.steps, lr=self.lr, optimizer=self.optimizer, timeout_s=60,
                           device="cpu", init=str(out / self.init) if self.init else None)


INIT_CASES = {c.name: c for c in [
    # GPT-2's tied embedding and head are read on both ranks, from a file keeping one of the names
    InitCase("gpt2-init", "gpt2", "gpt2.safetensors"),
    # Llama's weights and rotary frequencies come from the spec's init_weights, module by module
    InitCase("llama-meta", "llama", None, optimizer="adam", lr=1e-2),
]}


def _train_case(out: Path, name: str) -> tuple[TrainResult, Graph]:
    case = INIT_CASES[name]
    spec = case.spec()
    plan = Plan.load(out / f"{name}.plan.json")
    prepared = prepare(spec, plan, dist.get_world_size())
    return train(spec, plan, case.config(out), prepared=prepared, log=lambda s: None), prepared.graph


if __name__ == "__main__":
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    sys.exit(run_cases(sys.argv[1:], _train_case))
