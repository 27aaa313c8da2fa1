"""Each stage of a split model timed as the one module the runtime runs, forward and backward."""

from __future__ import annotations

import copy
import functools
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

import torch

from autopipe.profile._timer import step_clock
from autopipe.runtime.draws import drawing, seed_draws
from autopipe.runtime.modes import follow_modes
from autopipe.runtime.split import Split

stage_clock = step_clock
"""The clock stages are timed with (``autopipe.profile._timer.step_clock``)."""

MORE_RUNS = 10
"""With a minimum time, at most this many times ``repeats`` runs (``timed_runs``)."""

T = TypeVar("T")


def timed_runs(run: Callable[[], T], repeats: int, min_s: float = 0.0) -> list[T]:
    """``run()`` ``repeats`` times, and again while under ``min_s`` seconds have passed
    (at most ``MORE_RUNS × repeats`` runs in all).

    [Note: timing over a window] A machine's speed drifts over seconds: on the shared
    2-core VM this was measured on, a 128 × 128 by 128 × 32,768 product's median over 15
    runs read 10.0 to 14.5 ms in six rounds two seconds apart, alone on the machine. A
    training run takes seconds; five runs of a 60 ms stage sample 0.3 s of that drift, and
    the plans predicted from them moved by ±20% between two ``autopipe plan`` calls. Runs
    spread over a window of about a second give medians of the machine's usual speed.
    """
    out: list[T] = []
    start = time.perf_counter()
    while len(out) < repeats or (time.perf_counter() - start < min_s and len(out) < MORE_RUNS * repeats):
        out.append(run())
    return out


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


Run = tuple[float, float, float, float]
"""One run's seconds: the stage's forward and backward, the loss's forward and backward."""


class StageTimes(NamedTuple):
    """Medians of a stage timing."""

    forward_s: tuple[float, ...]
    """Each stage module's forward, seconds."""
    backward_s: tuple[float, ...]
    """Each stage module's backward (down to its inputs), seconds."""
    loss_s: tuple[float, float] | None = None
    """With a loss: its forward and its backward down to the last stage's outputs, seconds,
    timed on that stage's rank right after it."""


def run_once(module: torch.nn.Module, leaves: Sequence[torch.Tensor], clock: Callable[[], float],
             idle_s: float = 0.0, loss: Loss | None = None) -> Run:
    """One forward and one backward of ``module``, and of ``loss`` after it: their seconds
    on ``clock`` (the loss's are 0 without one).

    Without a loss the backward is seeded with ones; with one it starts from the loss, whose
    own backward (down to the module's outputs) is timed apart, as on the runtime's last
    stage. With ``idle_s`` the thread sleeps that long before each forward and backward, as
    a rank blocked on its peer does."""
    if idle_s > 0:
        time.sleep(idle_s)
    t0 = clock()
    outs = tuple(module(*leaves))
    t1 = clock()
    value = loss(outs) if loss is not None else None  # on what the stage returned, as the runtime's
    t2 = clock()
    grads = [o for o in outs if isinstance(o, torch.Tensor) and o.requires_grad]
    if idle_s > 0:
        time.sleep(idle_s)
    t3 = clock()
    if value is not None and grads:
        found = torch.autograd.grad(value, grads, allow_unused=True)
        seeds = [g for g in found if g is not None]
        grads = [o for o, g in zip(grads, found) if g is not None]
    else:
        seeds = [torch.ones_like(o) for o in grads]
    t4 = clock()
    if grads:
        torch.autograd.backward(grads, seeds)
    return t1 - t0, clock() - t4, t2 - t1, t4 - t3


def medians(runs: Sequence[Sequence[Run]], with_loss: bool) -> StageTimes:
    """``StageTimes`` of ``runs[k]``: the timed runs of stage ``k``; the loss's from the last."""
    forward = tuple(statistics.median(r[0] for r in rs) for rs in runs)
    backward = tuple(statistics.median(r[1] for r in rs) for rs in runs)
    if not with_loss or not runs:
        return StageTimes(forward, backward)
    return StageTimes(forward, backward, (statistics.median(r[2] for r in runs[-1]),
                                          statistics.median(r[3] for r in runs[-1])))


def time_stages(split: Split, inputs: Sequence[torch.Tensor], *, repeats: int = 11, warmup: int = 2,
                idle_s: float = 0.0, ranks: Sequence[int] | None = None, together: bool = False,
                loss: Loss | None = None, min_s: float = 0.0) -> StageTimes:
    """Each stage's forward and backward seconds for one micro-batch, as one module.

    The stages run on their predecessors' real outputs (``inputs`` are the model's
    tensor inputs, on the stages' device); a backward is seeded with ones. Copies of
    the stage modules run, so the model's statistics and gradients are left alone.
    Medians of ``repeats`` after ``warmup`` runs, or of more while they took under
    ``min_s`` seconds ([Note: timing over a window]), timed with ``stage_clock``. With
    ``idle_s`` the thread sleeps that long before each forward and each backward, as a
    rank blocked on its peer does. With ``loss`` the last stage runs it too, timed apart
    (``run_once``). Random nodes draw seeded, as the runtime's stages do.

    With ``together``, where ``together_reason`` finds nothing against it, every rank's
    stages (``ranks[i]``: the rank of stage ``i``, default ``i``) are timed at once, each
    rank in a process of its own on its own cores, as training runs them
    (``autopipe.runtime.timing_together``); else one after another in this thread.

    Returns:
        Each stage's forward and backward seconds, and the loss's.
    """
    modules = [copy.deepcopy(st.module) for st in split.stages]
    for module in modules:  # as the runtime's stages run ([Note: random draws per node and micro-batch])
        seed_draws(module)
        follow_modes(module)
    with drawing(0, 0, 0):
        return _time_stages(modules, inputs, repeats=repeats, warmup=warmup, idle_s=idle_s, ranks=ranks,
                            together=together, loss=loss, min_s=min_s)


def _time_stages(modules: Sequence[torch.nn.Module], inputs: Sequence[torch.Tensor], *, repeats: int,
                 warmup: int, idle_s: float, ranks: Sequence[int] | None, together: bool,
                 loss: Loss | None, min_s: float) -> StageTimes:
    per_stage = stage_inputs(modules, inputs)
    if together:
        from autopipe.runtime.timing_together import time_together, together_reason

        if together_reason(inputs) is None:
            return time_together(modules, per_stage, ranks=ranks, repeats=repeats, warmup=warmup,
                                 idle_s=idle_s, loss=loss, min_s=min_s)
    device = inputs[0].device if inputs else torch.device("cpu")
    clock = stage_clock(device)
    runs: list[list[Run]] = []
    for index, (module, values) in enumerate(zip(modules, per_stage)):
        leaves = as_leaves(index, values)
        last = loss if index == len(modules) - 1 else None
        for _ in range(warmup):
            run_once(module, leaves, clock, idle_s, last)
        runs.append(timed_runs(functools.partial(run_once, module, leaves, clock, idle_s, last), repeats, min_s))
    return medians(runs, loss is not None)
