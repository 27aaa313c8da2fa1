"""Which blocks of a given partition to recompute: enough to make it fit, and no more.

The ILP chooses recomputation together with the cuts ([Note: recomputation] in
``autopipe.partition.costs``); these greedy helpers serve everything else. ``fit`` turns a
heuristic partition (the DP's, a baseline's) into one that fits: in each overflowing
stage (with virtual stages, rank) it recomputes blocks, those that free the most bytes per second of forward first,
and failing that all of the stage's; ``prune`` drops the recomputation a solution does not
need, whole regions first, then blocks, largest forward first, as long as the partition
still fits and its step does not grow.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from autopipe.partition.costs import Evaluation, evaluate, recomputed, regions
from autopipe.partition.problem import Problem


def fit(problem: Problem, stage_of: Sequence[int]) -> tuple[int, ...] | None:
    """The blocks to recompute for ``stage_of`` to fit: ``config.recompute``'s default for
    ``none`` and ``full`` (None when that does not fit), for ``auto`` a greedy choice per
    stage (None when even all of a stage's candidates do not make it fit)."""
    default = recomputed(problem, None)
    ev = evaluate(problem, stage_of, default)
    if ev.fits:
        return default
    if problem.config.recompute != "auto":
        return None
    inputs = problem.input_bytes()
    chosen: list[int] = []
    for s in _overflowing(ev):
        mine = [b for b in problem.recompute_candidates() if stage_of[b] in s]
        # what each block frees recomputed alone (its input kept, its activations alive
        # once: ``Chain``'s price); most per second of forward first, free ones first of all
        frees = {b: problem.config.inflight(stage_of[b]) * (problem.blocks[b].activation_bytes - inputs[b])
                 - problem.blocks[b].activation_bytes for b in mine}
        order = sorted((b for b in mine if frees[b] > 0),
                       key=lambda b: (-frees[b] / problem.blocks[b].forward_s
                                      if problem.blocks[b].forward_s > 0 else -float("inf"), b))
        for extra in [*(order[:n] for n in range(1, len(order) + 1)), mine]:
            if _fits(evaluate(problem, stage_of, chosen + extra), s):
                chosen += extra
                break
        else:
            return None
    return tuple(sorted(chosen))


def _overflowing(ev: Evaluation) -> list[tuple[int, ...]]:
    """The stages that do not fit, each alone; with virtual stages the chunks of each rank
    that does not (memory holds per rank: [Note: chunks])."""
    if ev.ranks:
        return [r.chunks for r in ev.ranks if not r.fits]
    return [(s,) for s in ev.overflow]


def _fits(ev: Evaluation, stages: tuple[int, ...]) -> bool:
    """Whether ``stages`` (one stage, or one rank's chunks) fit."""
    if ev.ranks:
        return next(r for r in ev.ranks if r.chunks == stages).fits
    return all(ev.stages[s].fits for s in stages)


def prune(problem: Problem, stage_of: Sequence[int], recompute: Collection[int]) -> tuple[int, ...]:
    """``recompute`` less what the partition does not need (it still fits, and its step is
    no longer): whole regions, then single blocks, largest forward first. Under ``full``
    nothing is dropped."""
    chosen = set(recomputed(problem, recompute))
    if problem.config.recompute != "auto" or not chosen:
        return tuple(sorted(chosen))
    best = evaluate(problem, stage_of, chosen).objective_s

    def forward(group: Sequence[int]) -> float:
        return sum(problem.blocks[b].forward_s for b in group)

    for group in [*sorted(regions(stage_of, chosen), key=lambda r: (-forward(r), r)),
                  *sorted(((b,) for b in chosen), key=lambda r: (-forward(r), r))]:
        if not set(group) <= chosen:
            continue
        ev = evaluate(problem, stage_of, chosen - set(group))
        if ev.fits and ev.objective_s <= best:
            chosen, best = chosen - set(group), ev.objective_s
    return tuple(sorted(chosen))
