"""Tests for autopipe/partition/_solvers.py: limits on the MIP solvers' work."""

from __future__ import annotations

import random
from typing import Any

import pulp
import pytest

from autopipe.partition import _highs, _solvers


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


def test_values_that_miss_the_reported_objective_are_solved_again_cold(monkeypatch: pytest.MonkeyPatch) -> None:
    """[Note: HiGHS's values from a warm start]: where the columns HiGHS returns do not give
    the objective it reported, the model is solved again without the warm start."""
    if not _solvers.highs_available():
        pytest.skip("highspy is not installed")
    prob, warm = _knapsack()
    real = _highs.run
    warmed: list[bool] = []

    def run(prob: pulp.LpProblem, options: dict[str, Any], start: dict[str, float] | None,
            seconds: float) -> dict[str, Any]:
        reply: dict[str, Any] = real(prob, options, start, seconds)
        warmed.append(start is not None)
        if start is not None:  # the slip: its own optimum, reported with the warm start's columns
            values = [start.get(v.name, 0.0) for v in prob.variables()]
            for v, x in zip(prob.variables(), values):
                v.varValue = x
            reply = {**reply, "values": values}
        return reply

    monkeypatch.setattr(_highs, "run", run)
    cold = _solvers.solve(prob, solver="highs", warm=None, time_limit=30, gap=0.0)
    got = _solvers.solve(prob, solver="highs", warm=warm, time_limit=30, gap=0.0)
    assert warmed == [False, True, False]
    assert got.objective == pytest.approx(cold.objective) and got.values == cold.values
    assert got.objective < -sum(1 for v in warm.values() if v) * 10  # not the warm start's
