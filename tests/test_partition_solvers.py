"""Tests for autopipe/partition/_solvers.py: limits on the MIP solvers' work."""

from __future__ import annotations

import random

import pulp
import pytest

from autopipe.partition import _solvers


def _knapsack() -> tuple[pulp.LpProblem, dict[str, float]]:
    """A MIP that HiGHS does not solve at its root node, and a feasible starting solution."""
    rng = random.Random(1)
    prob = pulp.LpProblem("knapsack", pulp.LpMinimize)
    xs = [pulp.LpVariable(f"x{i}", cat=pulp.LpBinary) for i in range(40)]
    weights = [rng.randint(10, 99) for _ in xs]
    prob += -pulp.lpSum(rng.randint(10, 99) * x for x in xs)
    prob += pulp.lpSum(w * x for w, x in zip(weights, xs)) <= sum(weights) // 3
    prob += pulp.lpSum(xs[::2]) == 7
    return prob, {x.name: 1.0 if i in (0, 2, 4, 6, 8, 10, 12) else 0.0 for i, x in enumerate(xs)}


@pytest.mark.parametrize("solver", ["highs", "cbc"])
def test_node_limit_returns_the_best_found(solver: str) -> None:
    """HiGHS stops at a node limit with a status PuLP does not know (kSolutionLimit)."""
    prob, warm = _knapsack()
    full = _solvers.solve(prob, solver=solver, warm=None, time_limit=30, gap=0.0)
    assert full.status == "optimal"
    cold = _solvers.solve(prob, solver=solver, warm=None, time_limit=30, gap=0.0, max_nodes=0)
    assert cold.status in ("unsolved", "feasible", "optimal")
    started = _solvers.solve(prob, solver=solver, warm=warm, time_limit=30, gap=0.0, max_nodes=0)
    assert started.status in ("feasible", "optimal")
    assert full.objective <= started.objective <= -sum(1 for v in warm.values() if v) * 10
