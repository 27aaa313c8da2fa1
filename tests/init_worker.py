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

import torch
import torch.distributed as dist

from autopipe import ModelSpec, trace
from autopipe.plan_format import Plan
from autopipe.runtime.optim import TrainConfig
from autopipe.runtime.train import prepare, train

from .conftest import example_spec
from .runtime_cases import TINY


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


def main(argv: list[str]) -> int:
    out = Path(argv[0])
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    for name in argv[1:]:
        case = INIT_CASES[name]
        spec = case.spec()
        graph = trace(spec.model, spec.example_inputs)
        plan = Plan.load(out / f"{name}.plan.json")
        prepared = prepare(spec, plan, dist.get_world_size(), graph)
        result = train(spec, plan, case.config(out), prepared=prepared, log=lambda s: None)
        state = {}
        for module in result.modules.values():
            for k, v in [*module.named_parameters(remove_duplicate=False), *module.named_buffers()]:
                state[k] = v.detach().cpu().clone()
        torch.save({"losses": result.losses, "state": state}, out / f"{name}.rank{rank}.pt")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    sys.exit(main(sys.argv[1:]))
