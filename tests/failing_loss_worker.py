"""Specs for tests/test_train_failures.py: examples/mlp.py, whose loss or batch raises on rank 1."""

from __future__ import annotations

import os
import signal
from typing import Any

from autopipe.spec import ModelSpec

from .conftest import example_spec


def build(**knobs: Any) -> ModelSpec:
    """The MLP, its loss failing on the rank ``RANK=1`` (the last stage of a 2-stage plan)."""
    spec = example_spec("mlp", **knobs)
    inner = spec.loss_fn

    def loss_fn(output: Any, target: Any) -> Any:
        if os.environ.get("RANK") == "1":
            raise ValueError("this loss fails on purpose")
        return inner(output, target)

    spec.loss_fn = loss_fn
    return spec


def build_batch(**knobs: Any) -> ModelSpec:
    """The MLP, its batch of step 2 failing on the rank ``RANK=1``."""
    spec = example_spec("mlp", **knobs)
    inner = spec.batch

    def batch(n: int, step: int = 0) -> Any:
        if os.environ.get("RANK") == "1" and step == 1:
            raise KeyError("no such shard")
        return inner(n, step)

    spec.batch = batch
    return spec


def build_killed(**knobs: Any) -> ModelSpec:
    """The MLP, the rank ``RANK=1`` killed (SIGKILL, as the kernel's OOM killer does) in its loss."""
    spec = example_spec("mlp", **knobs)
    inner = spec.loss_fn

    def loss_fn(output: Any, target: Any) -> Any:
        if os.environ.get("RANK") == "1":
            os.kill(os.getpid(), signal.SIGKILL)
        return inner(output, target)

    spec.loss_fn = loss_fn
    return spec
