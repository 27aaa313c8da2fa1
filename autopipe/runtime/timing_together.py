"""Every rank's stages timed at once, each rank in a process of its own, as training runs them.

[Note: stages timed together]
On the CPU the ranks of a pipeline share one machine: its memory bandwidth and its
last-level cache. A stage timed alone runs faster than the same stage while its
peers compute beside it, and training's ranks compute beside each other for most
of a step. On this 2-core VM a tied LM's 32,768-word head (a 128 × 128 by
128 × 32,768 product and a softmax over it, one thread) took 12.5 ms alone and
14.8–15.0 ms with a second process running the same on the other core: 1.19×.
Stages timed one after another missed that, and the plans' predicted steps came
out 12–20% under the measured ones (docs/cost-model.md).

So the stages are timed together: one process per rank, forked from this one (the
stage modules and their inputs are inherited, nothing is pickled), each held to the
cores ``autopipe train`` gives that rank (``affinity.pin_cores``, nothing where
there are fewer cores than ranks or the user bound this process), with this
process's intra-op threads and subnormal setting. Each runs its warm-up, waits at a
barrier for the others, times whole steps of its program (its forwards and backwards in
its schedule's order: [Note: stages timed in their schedule's order]) until it has ``repeats``
runs of each stage (more, over a window of ``min_s``: [Note: timing over a window] in
``autopipe.runtime.timing``), reports the medians
and keeps running until every rank has reported, so each timed run has its peers
computing alongside. In training a faster rank waits part of the step for a slower
one; under constant load the slower rank's contention is priced a little high.

Not where torch has a GPU (or another accelerator): there autograd starts its device
threads at a process's first backward, a CPU one too, and a forked child's backward
raises ("Unable to handle autograd's threading in combination with fork-based
multiprocessing"; found on an H200, 2026-12-04). ``together_reason`` says so, and the
stages are timed one after another.
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import queue
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from autopipe.errors import ProfileError
from autopipe.runtime.affinity import pin_cores
from autopipe.runtime.timing import (
    Loss,
    Program,
    Run,
    StageTimes,
    as_leaves,
    medians,
    program_runs,
    run_program,
    single_program,
    stage_clock,
)

TIMEOUT_S = 300.0
"""How long the ranks may take to report, all together."""


def together_reason(inputs: Sequence[torch.Tensor]) -> str | None:
    """Why stages on ``inputs``' device cannot be timed together here; None when they can."""
    device = inputs[0].device if inputs else torch.device("cpu")
    if device.type != "cpu":
        return f"the stages run on {device.type}, not on the CPU"
    if "fork" not in mp.get_all_start_methods():
        return "this platform cannot fork"
    if _accelerator_present():
        # torch with an accelerator starts autograd's device threads at this process's first
        # backward (even a CPU one), after which a forked child's backward raises
        # "Unable to handle autograd's threading in combination with fork-based multiprocessing"
        return "autograd here runs device threads (torch with an accelerator), which a fork cannot keep"
    return None


def _accelerator_present() -> bool:
    """Whether torch here has a GPU (or another accelerator) it can use (torch < 2.6: CUDA only)."""
    accelerator = getattr(torch, "accelerator", None)
    return bool(accelerator.is_available()) if accelerator is not None else torch.cuda.is_available()


def _rank(rank: int, program: Program, modules: dict[int, torch.nn.Module],
          inputs: dict[int, list[torch.Tensor]], loss: Loss | None, last: int, world: int, idle_s: float,
          warmup: int, repeats: int, min_s: float, barrier: Any, done: Any, results: Any) -> None:
    """One rank's process: warm up, meet the others, time, report, keep the load on."""
    try:
        pin_cores(rank, world)  # as `autopipe train` holds its ranks
        clock = stage_clock(torch.device("cpu"))
        leaves = {i: as_leaves(i, values) for i, values in inputs.items()}
        step = functools.partial(run_program, program, modules, leaves, clock, idle_s, loss, last)
        timed = program_runs(program, repeats, warmup, min_s, step, before_timing=lambda: barrier.wait(TIMEOUT_S))
        results.put((rank, sorted(timed.items())))
        while not done.is_set():
            step()
    except threading.BrokenBarrierError:  # another rank failed (and says why), or the wait timed out
        results.put((rank, None))
    except BaseException as e:  # reported to the parent, which raises it there
        barrier.abort()
        results.put((rank, f"{type(e).__name__}: {e}"))


def time_together(modules: Sequence[torch.nn.Module], inputs: Sequence[Sequence[torch.Tensor]], *,
                  ranks: Sequence[int] | None, repeats: int, warmup: int,
                  idle_s: float, loss: Loss | None = None, min_s: float = 0.0,
                  programs: Mapping[int, Program] | None = None) -> StageTimes:
    """Each stage's forward and backward seconds, every rank's stages timed at once
    ([Note: stages timed together]).

    Args:
        modules: the stage modules (copies: they run in the forked processes).
        inputs: each stage's tensor inputs (``timing.stage_inputs``).
        ranks: the rank of each stage (default: stage ``i`` on rank ``i``).
        loss: run after the last stage on its rank, timed apart (``timing.run_program``).
        min_s: each rank times more than ``repeats`` runs while under this many seconds
            have passed (``timing.timed_runs``).
        programs: each rank's step (``timing.run_program``); default: each of its stages
            forward then backward on one micro-batch.

    Raises:
        ProfileError: a rank failed or did not report within ``TIMEOUT_S``.
    """
    rank_of = list(ranks) if ranks is not None else list(range(len(modules)))
    world = sorted(set(rank_of))
    ctx = mp.get_context("fork")
    barrier, done, results = ctx.Barrier(len(world)), ctx.Event(), ctx.Queue()
    procs = []
    for r in world:
        mine = [i for i, q in enumerate(rank_of) if q == r]
        program = list(programs[r]) if programs is not None and r in programs else single_program(mine)
        procs.append(ctx.Process(target=_rank, daemon=True, args=(
            r, program, {i: modules[i] for i in mine}, {i: list(inputs[i]) for i in mine}, loss,
            len(modules) - 1, len(world), idle_s, warmup, repeats, min_s, barrier, done, results)))
    runs: list[list[Run]] = [[] for _ in modules]
    failures: dict[int, str | None] = {}
    try:
        for p in procs:
            p.start()
        for _ in world:
            try:
                rank, answer = results.get(timeout=TIMEOUT_S)
            except queue.Empty:
                raise ProfileError(f"timing the stages together: a rank did not report within {TIMEOUT_S:.0f} s",
                                   hint="plan with refine=False (--no-refine)") from None
            if answer is None or isinstance(answer, str):
                failures[rank] = answer
                continue
            for index, timed in answer:
                runs[index] = timed
        if failures:
            rank, why = min(failures.items(), key=lambda kv: (kv[1] is None, kv[0]))
            raise ProfileError(f"timing the stages together failed on rank {rank}: "
                               f"{why or 'the ranks did not all start within ' + format(TIMEOUT_S, '.0f') + ' s'}",
                               hint="plan with refine=False (--no-refine)")
    finally:
        done.set()
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.terminate()
                p.join()
    return medians(runs, loss is not None)
