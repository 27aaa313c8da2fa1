"""What a run of a model on its example must leave as it found it: buffers, the random state."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def buffers_restored(module: nn.Module) -> Iterator[None]:
    """Undo what training-mode forwards do to buffers (batch-norm running statistics)."""
    saved = [(b, b.detach().clone()) for b in module.buffers() if b.device.type != "meta"]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, value in saved:
                b.copy_(value)


@contextmanager
def state_kept(module: nn.Module) -> Iterator[None]:
    """``module``'s buffers and the random state (the CPU's and its CUDA devices') as they
    were before: a run of the user's model while tracing it leaves no trace in it."""
    cuda = sorted({t.device.index or 0 for t in (*module.parameters(), *module.buffers())
                   if t.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda), buffers_restored(module):
        yield
