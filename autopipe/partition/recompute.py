"""Which blocks of a given partition to recompute: the fewest that make it fit, and no more.

The ILP chooses recomputation together with the cuts ([Note: recomputation] in
``autopipe.partition.costs``); these greedy helpers serve everything else. ``fit`` turns a
heuristic partition (the DP's, a baseline's) into one that fits by recomputing in each
overflowing stage the blocks that free the most bytes per second of forward first;
``prune`` drops recomputation that a solution does not need: blocks whose recomputation
neither makes a stage fit nor is free, largest forward first, as long as the partition
still fits and its step does not grow.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from autopipe.partition.costs import evaluate, recomputed
from autopipe.partition.problem import Problem


def fit(problem: Problem, stage_of: Sequence[int]) -> tuple[int, ...] | None:
    """The blocks to recompute for ``stage_of`` to fit: ``config.recompute``'s default for
    ``none`` and ``full`` (None when that does not fit), for ``auto`` a greedy choice per
    stage (None when even every candidate does not make a stage fit)."""
    default = recomputed(problem, None)
    ev = evaluate(problem, stage_of, default)
    if ev.fits:
        return default
    if problem.config.recompute != "auto":
        return None
    savings = problem.recompute_savings()
    chosen: set[int] = set()
    for s in ev.overflow:
        # most bytes freed per second of forward first; free recomputation first of all
        order = sorted((b for b in problem.recompute_candidates() if stage_of[b] == s),
                       key=lambda b: (-savings[b] / problem.blocks[b].forward_s
                                      if problem.blocks[b].forward_s > 0 else -float("inf"), b))
        for b in order:
            chosen.add(b)
            if evaluate(problem, stage_of, chosen).stages[s].fits:
                break
        else:
            return None
    return tuple(sorted(chosen))


def prune(problem: Problem, stage_of: Sequence[int], recompute: Collection[int]) -> tuple[int, ...]:
    """``recompute`` less the blocks whose recomputation the partition does not need (it
    still fits, and its step is no longer), trying the largest forward first. Under
    ``full`` nothing is dropped."""
    chosen = set(recomputed(problem, recompute))
    if problem.config.recompute != "auto" or not chosen:
        return tuple(sorted(chosen))
    best = evaluate(problem, stage_of, chosen).objective_s
    for b in sorted(chosen, key=lambda b: (-problem.blocks[b].forward_s, b)):
        trial = chosen - {b}
        ev = evaluate(problem, stage_of, trial)
        if ev.fits and ev.objective_s <= best:
            chosen, best = trial, ev.objective_s
    return tuple(sorted(chosen))
