"""Brute force: every valid partition of a small problem, for checking the other methods."""

from __future__ import annotations

from collections.abc import Iterator

from autopipe.partition.costs import evaluate, violations
from autopipe.partition.problem import Problem

MAX_ASSIGNMENTS = 200_000


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


def best(problem: Problem) -> tuple[float, list[int]] | None:
    """The fastest valid partition that fits in memory, or None (first found on ties)."""
    found: tuple[float, list[int]] | None = None
    for stage_of in partitions(problem):
        ev = evaluate(problem, stage_of)
        if ev.fits and (found is None or ev.objective_s < found[0]):
            found = (ev.objective_s, stage_of)
    return found
