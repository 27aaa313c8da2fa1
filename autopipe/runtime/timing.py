"""Each stage of a split model timed as the one module the runtime runs, forward and backward."""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch

from autopipe.profile._timer import step_clock
from autopipe.runtime.split import Split

stage_clock = step_clock
"""The clock stages are timed with (``autopipe.profile._timer.step_clock``)."""


def time_stages(split: Split, inputs: Sequence[torch.Tensor], *, repeats: int = 11, warmup: int = 2,
                idle_s: float = 0.0) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Each stage's forward and backward seconds for one micro-batch, as one module.

    The stages run in order, each on its predecessor's real outputs (``inputs`` are
    the model's tensor inputs, on the stages' device); a backward is seeded with
    ones. Copies of the stage modules run, so the model's statistics and gradients
    are left alone. Medians of ``repeats`` after ``warmup`` runs, timed with
    ``stage_clock``. With ``idle_s`` the thread sleeps that long before each forward
    and each backward, as a rank blocked on its peer does.

    Returns:
        (forward seconds per stage, backward seconds per stage).
    """
    values = list(inputs)
    device = values[0].device if values else torch.device("cpu")
    clock = stage_clock(device)
    forward_s: list[float] = []
    backward_s: list[float] = []
    for st in split.stages:
        module = copy.deepcopy(st.module)
        leaves = [v.detach().requires_grad_(st.index > 0 and v.is_floating_point()) for v in values]
        fwd, bwd = [], []
        outs: tuple[Any, ...] = ()
        for i in range(warmup + repeats):
            if idle_s > 0:
                time.sleep(idle_s)
            t0 = clock()
            outs = tuple(module(*leaves))
            t1 = clock()
            grads = [o for o in outs if isinstance(o, torch.Tensor) and o.requires_grad]
            seeds = [torch.ones_like(o) for o in grads]
            if idle_s > 0:
                time.sleep(idle_s)
            t2 = clock()
            if grads:
                torch.autograd.backward(grads, seeds)
            if i >= warmup:
                fwd.append(t1 - t0)
                bwd.append(clock() - t2)
        forward_s.append(statistics.median(fwd))
        backward_s.append(statistics.median(bwd))
        values = [o.detach() for o in outs if isinstance(o, torch.Tensor)]
    return tuple(forward_s), tuple(backward_s)
