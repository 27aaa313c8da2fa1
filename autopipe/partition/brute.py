"""Brute force: every valid partition of a small problem, for checking the other methods."""

from __future__ import annotations

from collections.abc import Iterator

from autopipe.partition.costs import TIE_BANDS, evaluate, tie_key, violations
from autopipe.partition.problem import Problem

MAX_ASSIGNMENTS = 200_000
MAX_RECOMPUTED = 8
"""Most recompute candidates whose every subset ``solutions`` tries."""


def partitions(problem: Problem) -> Iterator[list[int]]:
    """Every valid block → stage assignment (convex, pinned, no empty stage, only tensors cut).

    Raises:
        ValueError: the problem is too big to enumerate.
    """
    p, n = problem.config.num_stages, problem.size
    if p**n > MAX_ASSIGNMENTS:
        raise ValueError(f"{p}^{n} assignments is too many to enumerate")
    preds: list[list[int]] = [[] for _ in range(n)]
    for u, v in problem.edges():
        preds[v].append(u)
    stage_of = [0] * n

    def place(b: int) -> Iterator[list[int]]:
        if b == n:
            if not violations(problem, stage_of):
                yield list(stage_of)
            return
        low = max((stage_of[u] for u in preds[b]), default=0)
        for s in range(low, p):
            stage_of[b] = s
            yield from place(b + 1)

    yield from place(0)


def solutions(problem: Problem) -> Iterator[tuple[list[int], tuple[int, ...] | None]]:
    """Every valid partition with every choice of recomputed blocks (``config.recompute``
    ``auto``: each subset of the candidates; else only its default, None).

    Raises:
        ValueError: the problem is too big to enumerate.
    """
    choices: list[tuple[int, ...] | None] = [None]
    if problem.config.recompute == "auto":
        candidates = problem.recompute_candidates()
        if len(candidates) > MAX_RECOMPUTED:
            raise ValueError(f"2^{len(candidates)} recompute choices per partition are too many")
        choices = [tuple(c for k, c in enumerate(candidates) if mask >> k & 1)
                   for mask in range(2 ** len(candidates))]
    for stage_of in partitions(problem):
        for chosen in choices:
            yield stage_of, chosen


def best(problem: Problem, *, ties: float = 1e-9) -> tuple[float, list[int]] | None:
    """The fastest valid partition that fits in memory, or None.

    Partitions within ``ties`` (relative) of the fastest tie; among them, as in the ILP
    ([Note: ties] in ``autopipe.partition.ilp``), each ``tie_key`` criterion in turn keeps
    those within ``TIE_BANDS`` of its best, and the fastest of what is left wins (then the
    least key).
    """
    found: list[tuple[float, tuple[float, float, float], list[int]]] = []
    for stage_of, chosen in solutions(problem):
        ev = evaluate(problem, stage_of, chosen)
        if ev.fits:
            found.append((ev.objective_s, tie_key(problem, ev), stage_of))
    if not found:
        return None
    fastest = min(f[0] for f in found)
    kept = [f for f in found if f[0] <= fastest * (1 + ties)]
    for i in range(3):
        least = min(f[1][i] for f in kept)
        kept = [f for f in kept if f[1][i] <= least + TIE_BANDS[i] * abs(least) + 1e-12]
    step, _, stage_of = min(kept, key=lambda f: (f[0], f[1]))
    return step, stage_of
