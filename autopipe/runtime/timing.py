"""Each stage of a split model timed as the one module the runtime runs, forward and backward."""

from __future__ import annotations

import copy
import functools
import statistics
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
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


class _Forward(NamedTuple):
    """A forward run and kept for its backward: the outputs, the loss's value, their seconds,
    and the detached outputs the loss read ([Note: the loss's backward on its own])."""

    outs: tuple[Any, ...]
    value: torch.Tensor | None
    forward_s: float
    loss_s: float
    read: tuple[Any, ...] = ()


def _forward(module: torch.nn.Module, leaves: Sequence[torch.Tensor], clock: Callable[[], float],
             idle_s: float, loss: Loss | None) -> _Forward:
    """One forward of ``module``, and of ``loss`` after it, timed apart (the loss's 0 without
    one). With ``idle_s`` the thread sleeps that long first, as a rank blocked on its peer does."""
    if idle_s > 0:
        time.sleep(idle_s)
    t0 = clock()
    outs = tuple(module(*leaves))
    t1 = clock()
    if loss is None:
        return _Forward(outs, None, t1 - t0, 0.0)
    # on what the stage returned, as the runtime's, cut from the stage's graph
    read = tuple(o.detach().requires_grad_(o.requires_grad) if isinstance(o, torch.Tensor) else o for o in outs)
    value = loss(read)
    return _Forward(outs, value, t1 - t0, clock() - t1, read)


# [Note: the loss's backward on its own]
#
# The loss is timed apart from the last stage, its backward down to the stage's outputs.
# Taken as ``autograd.grad(loss, outputs)`` on the outputs themselves, that backward also
# ran through the stage wherever one output is computed from another (T5 returns its
# encoder's last hidden state, which its decoder reads: the loss's gradient reaches it
# through the decoder too), freeing that part of the graph, and the stage's own backward
# then raised "Trying to backward through the graph a second time" (`autopipe plan` of a
# T5: "timing the stages together failed on rank 1"). The loss therefore reads detached
# copies of the outputs: its backward stops at them, and the gradients it leaves there seed
# the stage's backward, which adds them up through the stage as training's does.


def _backward(done: _Forward, clock: Callable[[], float], idle_s: float) -> Run:
    """The backward of a kept forward, and the ``Run`` of both. Without a loss it is seeded
    with ones; with one it starts from the loss, whose own backward (down to the module's
    outputs) is timed apart, as on the runtime's last stage."""
    wanted = [k for k, o in enumerate(done.outs) if isinstance(o, torch.Tensor) and o.requires_grad]
    grads = [done.outs[k] for k in wanted]
    if idle_s > 0:
        time.sleep(idle_s)
    t3 = clock()
    if done.value is not None and grads:  # [Note: the loss's backward on its own]
        read = [done.read[k] for k in wanted]
        found = torch.autograd.grad(done.value, read, allow_unused=True)
        seeds = [g for g in found if g is not None]
        grads = [o for o, g in zip(grads, found) if g is not None]
    else:
        seeds = [torch.ones_like(o) for o in grads]
    t4 = clock()
    if grads:
        torch.autograd.backward(grads, seeds)
    return done.forward_s, clock() - t4, done.loss_s, t4 - t3


Program = Sequence[tuple[int, str, int]]
"""One rank's actions in a step, in its schedule's order: (stage index, ``F`` forward or
``B`` backward, micro-batch)."""


def single_program(stages: Sequence[int]) -> list[tuple[int, str, int]]:
    """Each of ``stages`` forward then backward on one micro-batch, one stage after another."""
    return [(i, kind, 0) for i in stages for kind in "FB"]


def run_program(program: Program, modules: Mapping[int, torch.nn.Module],
                leaves: Mapping[int, Sequence[torch.Tensor]], clock: Callable[[], float],
                idle_s: float = 0.0, loss: Loss | None = None, last: int = -1) -> dict[int, list[Run]]:
    """One step of a rank: its stages' gradients dropped (``zero_grad(set_to_none=True)``,
    as each training step starts), then ``program``'s actions in order, each backward on
    the activations its micro-batch's forward kept, so as many micro-batches are in flight
    at each point as the schedule keeps. ``loss`` runs after stage ``last``'s forwards.

    [Note: stages timed in their schedule's order]
    A stage timed forward-then-backward on one micro-batch ran faster than training runs
    it: Llama's (the example) first stage of 3 blocks took 9.1 ms forward and 12.2 ms
    backward that way, and 9.3 and 12.8 ms in 1F1B's order (F0 F1 B0 F2 B1 F3 B2 B3: each
    backward after another micro-batch's forward has taken the cache), in one process, one
    thread. In training it took 9.8 and 13.9 ms (medians over 22 steps, the other rank
    computing beside it), against 8.5 and 12.6 priced by the stages timed the old way. (The
    rest was the runtime's in-place weight gradients, about 20 µs more a linear layer's
    forward, which the timed copies now get too: ``prepare`` in ``time_stages``.) So each
    rank runs a whole step as its schedule orders it, and every plan of
    ``benchmarks/bench_cost_model.py`` predicts its best measured step (0.99–1.00 on
    average over two runs, 0.96 before; docs/cost-model.md).

    Returns:
        Per stage of the program, the ``Run`` of each of its backwards, in program order.
    """
    for module in modules.values():
        for p in module.parameters():
            p.grad = None
    kept: dict[tuple[int, int], _Forward] = {}
    runs: dict[int, list[Run]] = {i: [] for i, _, _ in program}
    for index, kind, microbatch in program:
        if kind == "F":
            kept[index, microbatch] = _forward(modules[index], leaves[index], clock, idle_s,
                                                loss if index == last else None)
        else:
            runs[index].append(_backward(kept.pop((index, microbatch)), clock, idle_s))
    return runs


def program_runs(program: Program, repeats: int, warmup: int, min_s: float,
                 step: Callable[[], dict[int, list[Run]]],
                 before_timing: Callable[[], object] | None = None) -> dict[int, list[Run]]:
    """``step()`` (``run_program`` of ``program``) untimed for ``warmup`` runs of each stage,
    then ``before_timing()``, then enough times for ``repeats`` runs of every stage (at least
    one step) and over ``min_s`` seconds (``timed_runs``); each stage's runs, pooled."""
    per_step = min(Counter(i for i, kind, _ in program if kind == "B").values(), default=1)
    for _ in range(-(-warmup // per_step)):
        step()
    if before_timing is not None:
        before_timing()
    out: dict[int, list[Run]] = {}
    for runs in timed_runs(step, max(1, -(-repeats // per_step)), min_s):
        for index, timed in runs.items():
            out.setdefault(index, []).extend(timed)
    return out


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
                loss: Loss | None = None, min_s: float = 0.0, programs: Mapping[int, Program] | None = None,
                prepare: Callable[[list[torch.nn.Module]], object] | None = None) -> StageTimes:
    """Each stage's forward and backward seconds for one micro-batch, as one module.

    The stages run on their predecessors' real outputs (``inputs`` are the model's
    tensor inputs, on the stages' device); a backward is seeded with ones. Copies of
    the stage modules run, so the model's statistics and gradients are left alone.
    Medians of ``repeats`` after ``warmup`` runs, or of more while they took under
    ``min_s`` seconds ([Note: timing over a window]), timed with ``stage_clock``. With
    ``idle_s`` the thread sleeps that long before each forward and each backward, as a
    rank blocked on its peer does. With ``loss`` the last stage runs it too, timed apart
    (``run_program``). Random nodes draw seeded, as the runtime's stages do.

    Each rank runs ``programs[rank]`` as one step (``run_program``: its schedule's order
    of forwards and backwards over the step's micro-batches, [Note: stages timed in their
    schedule's order]); without, each of its stages forward then backward on one
    micro-batch. ``prepare`` gets each rank's copies before they run, to make them what
    the runtime runs (its weight gradients added in place, say).

    With ``together``, where ``together_reason`` finds nothing against it, every rank's
    stages (``ranks[i]``: the rank of stage ``i``, default ``i``) are timed at once, each
    rank in a process of its own on its own cores, as training runs them
    (``autopipe.runtime.timing_together``); else one rank after another in this thread.

    Returns:
        Each stage's forward and backward seconds, and the loss's.
    """
    modules = [copy.deepcopy(st.module) for st in split.stages]
    rank_of = list(ranks) if ranks is not None else list(range(len(modules)))
    world = sorted(set(rank_of))
    mine = {r: [i for i, q in enumerate(rank_of) if q == r] for r in world}
    if prepare is not None:
        for r in world:
            prepare([modules[i] for i in mine[r]])
    for module in modules:  # as the runtime's stages run ([Note: random draws per node and micro-batch])
        seed_draws(module)
        follow_modes(module)
    steps = {r: list(programs[r]) if programs is not None and r in programs else single_program(mine[r])
             for r in world}
    with drawing(0, 0, 0):
        return _time_stages(modules, inputs, repeats=repeats, warmup=warmup, idle_s=idle_s, ranks=rank_of,
                            together=together, loss=loss, min_s=min_s, programs=steps)


def _time_stages(modules: Sequence[torch.nn.Module], inputs: Sequence[torch.Tensor], *, repeats: int,
                 warmup: int, idle_s: float, ranks: Sequence[int], together: bool,
                 loss: Loss | None, min_s: float, programs: Mapping[int, Program]) -> StageTimes:
    per_stage = stage_inputs(modules, inputs)
    if together:
        from autopipe.runtime.timing_together import time_together, together_reason

        if together_reason(inputs) is None:
            return time_together(modules, per_stage, ranks=ranks, repeats=repeats, warmup=warmup,
                                 idle_s=idle_s, loss=loss, min_s=min_s, programs=programs)
    device = inputs[0].device if inputs else torch.device("cpu")
    clock = stage_clock(device)
    last = len(modules) - 1
    runs: list[list[Run]] = [[] for _ in modules]
    for program in programs.values():
        stages = {i for i, _, _ in program}
        mods = {i: modules[i] for i in stages}
        leaves = {i: as_leaves(i, per_stage[i]) for i in stages}
        step = functools.partial(run_program, program, mods, leaves, clock, idle_s, loss, last)
        for index, timed in program_runs(program, repeats, warmup, min_s, step).items():
            runs[index] = timed
    return medians(runs, loss is not None)
