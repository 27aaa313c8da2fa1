"""Tests for autopipe/partition/_highs.py: HiGHS answers from a process of its own, and a
HiGHS that overruns its deadline or dies is killed and CBC answers instead
([Note: a solver held to its deadline])."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pulp
import pytest

from autopipe.partition import _highs, _solvers

pytestmark = pytest.mark.skipif(not _solvers.highs_available(), reason="highspy is not installed")


def _knapsack(sense: int = pulp.LpMinimize) -> pulp.LpProblem:
    """Values 1..6, weights 2..7, capacity 10, plus a constant 3 (best: items 3 and 5 or so)."""
    prob = pulp.LpProblem("knapsack", sense)
    x = [pulp.LpVariable(f"x{i}", cat="Binary") for i in range(6)]
    value = pulp.lpSum((i + 1) * v for i, v in enumerate(x)) + 3
    prob += -value if sense == pulp.LpMinimize else value
    prob += pulp.lpSum((i + 2) * v for i, v in enumerate(x)) <= 10
    return prob


def test_highs_answers_from_its_own_process_as_cbc_does() -> None:
    for sense in (pulp.LpMinimize, pulp.LpMaximize):
        got = _solvers.solve(_knapsack(sense), solver="highs", warm=None, time_limit=10, gap=0.0)
        ref = _solvers.solve(_knapsack(sense), solver="cbc", warm=None, time_limit=10, gap=0.0)
        assert got.status == ref.status == "optimal"
        assert got.objective == pytest.approx(ref.objective)
        assert abs(got.objective) == pytest.approx(3 + 8)  # 3 + the best value within 10: 8
        assert set(got.values) == {f"x{i}" for i in range(6)}
    assert _highs._WORKER.proc is not None and _highs._WORKER.proc.pid != os.getpid()


@pytest.mark.parametrize("solver", _solvers.SOLVERS)
def test_an_lp_optimum_is_its_own_bound_and_warm_starts_are_taken(solver: str) -> None:
    """Whatever the MIP gap: an LP's optimum is proven (CBC solves it once, not twice)."""
    lp = pulp.LpProblem("lp", pulp.LpMinimize)
    x, y = pulp.LpVariable("x", 0), pulp.LpVariable("y", 0)
    lp += x + 2 * y + 1.5
    lp += x + y >= 2
    got = _solvers.solve(lp, solver=solver, warm={"x": 2.0, "y": 0.0}, time_limit=10, gap=0.01)
    assert got.status == "optimal" and got.objective == pytest.approx(3.5) == got.bound
    assert got.values == pytest.approx({"x": 2.0, "y": 0.0})


@pytest.mark.parametrize("script", ["import time; time.sleep(60)", "raise SystemExit(3)"])
def test_a_highs_that_hangs_or_dies_is_answered_by_cbc(script: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """HiGHS 1.16's presolve looped past its time limit in the zoo job; a worker that hangs
    (or dies) in its place gives CBC's answer soon after the deadline, and the next solve
    starts a worker anew."""
    expected = _solvers.solve(_knapsack(), solver="cbc", warm=None, time_limit=10, gap=0.0)
    broken = tmp_path / "worker.py"
    broken.write_text(script)
    monkeypatch.setattr(_highs, "_WORKER", _highs._Worker())
    monkeypatch.setattr(_highs, "WORKER", broken)
    monkeypatch.setattr(_solvers, "OVERRUN_S", 0.5)
    start = time.monotonic()
    got = _solvers.solve(_knapsack(), solver="highs", warm=None, time_limit=0.2, gap=0.0)
    assert time.monotonic() - start < 10
    assert got.status == "optimal" and got.objective == pytest.approx(expected.objective)
    assert _highs._WORKER.proc is None  # killed and forgotten
    monkeypatch.setattr(_highs, "WORKER", Path(_highs.__file__).with_name("_highs_worker.py"))
    again = _solvers.solve(_knapsack(), solver="highs", warm=None, time_limit=10, gap=0.0)
    assert again.objective == pytest.approx(expected.objective)
    _highs._WORKER.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_solves_with_a_worker_of_its_own() -> None:
    """A process forked from a planner (timing_together's ranks are) neither writes to its
    parent's worker nor kills it on leaving."""
    first = _solvers.solve(_knapsack(), solver="highs", warm=None, time_limit=10, gap=0.0)
    parent_worker = _highs._WORKER.proc
    assert parent_worker is not None
    pid = os.fork()
    if pid == 0:
        ok = False
        try:
            got = _solvers.solve(_knapsack(), solver="highs", warm=None, time_limit=10, gap=0.0)
            ok = got.objective == first.objective and _highs._WORKER.proc is not parent_worker
            _highs._WORKER.close()
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert _highs._WORKER.proc is parent_worker and parent_worker.poll() is None
    again = _solvers.solve(_knapsack(), solver="highs", warm=None, time_limit=10, gap=0.0)
    assert again.objective == first.objective
