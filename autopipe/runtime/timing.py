"""Each stage of a split model timed as the one module the runtime runs, forward and backward."""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from autopipe.profile._timer import step_clock
from autopipe.runtime.split import Split

stage_clock = step_clock
"""The clock stages are timed with (``autopipe.profile._timer.step_clock``)."""


def stage_inputs(modules: Sequence[torch.nn.Module],
                 inputs: Sequence[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Each stage's tensor inputs for one micro-batch: the model's ``inputs`` for the first
    of ``modules``, its predecessor's real outputs (detached) for the others."""
    values = list(inputs)
    out: list[list[torch.Tensor]] = []
    with torch.no_grad():
        for module in modules:
            out.append([v.detach() for v in values])
            values = [o.detach() for o in module(*values) if isinstance(o, torch.Tensor)]
    return out


def as_leaves(index: int, values: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """A stage's inputs as autograd leaves: floating inputs of every stage but the first
    need their gradient, as the runtime's received activations do."""
    return [v.detach().requires_grad_(index > 0 and v.is_floating_point()) for v in values]


Loss = Callable[[tuple[Any, ...]], torch.Tensor]
"""The training loss on the last stage's outputs (the runtime's ``loss_fn`` with one target)."""


def run_once(module: torch.nn.Module, leaves: Sequence[torch.Tensor], clock: Callable[[], float],
             idle_s: float = 0.0, loss: Loss | None = None) -> tuple[float, float]:
    """One forward and one backward of ``module``: their seconds on ``clock``.

    The backward is seeded with ones, or with ``loss`` it starts from the loss, which
    then counts in both (as on the runtime's last stage). With ``idle_s`` the thread
    sleeps that long before each, as a rank blocked on its peer does."""
    if idle_s > 0:
        time.sleep(idle_s)
    t0 = clock()
    outs = tuple(module(*leaves))
    if loss is not None:
        outs = (loss(outs),)
    t1 = clock()
    grads = [o for o in outs if isinstance(o, torch.Tensor) and o.requires_grad]
    seeds = [torch.ones_like(o) for o in grads]
    if idle_s > 0:
        time.sleep(idle_s)
    t2 = clock()
    if grads:
        torch.autograd.backward(grads, seeds)
    return t1 - t0, clock() - t2


def time_stages(split: Split, inputs: Sequence[torch.Tensor], *, repeats: int = 11, warmup: int = 2,
                idle_s: float = 0.0, ranks: Sequence[int] | None = None, together: bool = False,
                loss: Loss | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Each stage's forward and backward seconds for one micro-batch, as one module.

    The stages run on their predecessors' real outputs (``inputs`` are the model's
    tensor inputs, on the stages' device); a backward is seeded with ones. Copies of
    the stage modules run, so the model's statistics and gradients are left alone.
    Medians of ``repeats`` after ``warmup`` runs, timed with ``stage_clock``. With
    ``idle_s`` the thread sleeps that long before each forward and each backward, as a
    rank blocked on its peer does. With ``loss`` the last stage's times include the loss
    (``run_once``).

    With ``together``, where ``together_reason`` finds nothing against it, every rank's
    stages (``ranks[i]``: the rank of stage ``i``, default ``i``) are timed at once, each
    rank in a process of its own on its own cores, as training runs them
    (``autopipe.runtime.timing_together``); else one after another in this thread.

    Returns:
        (forward seconds per stage, backward seconds per stage).
    """
    modules = [copy.deepcopy(st.module) for st in split.stages]
    per_stage = stage_inputs(modules, inputs)
    if together:
        from autopipe.runtime.timing_together import time_together, together_reason

        if together_reason(inputs) is None:
            return time_together(modules, per_stage, ranks=ranks, repeats=repeats, warmup=warmup,
                                 idle_s=idle_s, loss=loss)
    device = inputs[0].device if inputs else torch.device("cpu")
    clock = stage_clock(device)
    forward_s: list[float] = []
    backward_s: list[float] = []
    for index, (module, values) in enumerate(zip(modules, per_stage)):
        leaves = as_leaves(index, values)
        last = loss if index == len(modules) - 1 else None
        runs = [run_once(module, leaves, clock, idle_s, last) for _ in range(warmup + repeats)][warmup:]
        forward_s.append(statistics.median(f for f, _ in runs))
        backward_s.append(statistics.median(b for _, b in runs))
    return tuple(forward_s), tuple(backward_s)
