"""Run a PuLP model on HiGHS (warm-started, with its proven bound) or on PuLP's bundled CBC."""

from __future__ import annotations

import contextlib
import functools
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pulp

from autopipe.errors import PlanError

SOLVERS = ("highs", "cbc")


@dataclass(frozen=True, slots=True, kw_only=True)
class RawResult:
    """What a MIP solver said."""

    status: str
    """``optimal`` (gap within tolerance), ``feasible`` (stopped early with a solution),
    ``infeasible`` (proven), or ``unsolved`` (stopped without a solution)."""
    values: dict[str, float]
    """Variable name → value (empty without a solution)."""
    bound: float
    """Proven lower bound on the objective (``-inf`` when none)."""
    objective: float
    """The model's objective at ``values`` (``inf`` without a solution)."""
    seconds: float


def highs_available() -> bool:
    """Whether highspy is importable."""
    return bool(pulp.HiGHS().available())


@contextlib.contextmanager
def _stdout_silenced() -> Iterator[None]:
    """Point file descriptor 1 at /dev/null (HiGHS prints a banner from C++ on first use)."""
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


@functools.cache
def quiet_highs() -> None:
    """Create the process's first HiGHS object with stdout silenced (it prints a banner)."""
    if not highs_available():
        return
    import highspy

    with _stdout_silenced():
        highspy.Highs()  # type: ignore[no-untyped-call]


NO_PROBING = 1 << 15
"""HiGHS's ``presolve_rule_off`` bit for probing. With recomputation's rows, HiGHS 1.16's
probing ran for minutes past the time limit on the Llama-2-7B benchmark (400 blocks, 8
stages: it stopped in presolve after 5 min at a 60 s limit); without it the same solve was
optimal in 26 s."""


class _WarmHiGHS(pulp.HiGHS):  # type: ignore[misc]
    """pulp.HiGHS that hands HiGHS a starting solution before it runs."""

    def __init__(self, warm: dict[str, float] | None, offset: float, *, probing: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.warm = warm
        self.offset = offset
        self.probing = probing

    def callSolver(self, lp: pulp.LpProblem) -> None:  # PuLP's name
        # PuLP drops the objective's constant; HiGHS needs it for a true relative gap
        lp.solverModel.changeObjectiveOffset(self.offset)
        if not self.probing:
            lp.solverModel.setOptionValue("presolve_rule_off", NO_PROBING)
        if self.warm:
            import highspy

            variables = lp.variables()
            col = [0.0] * len(variables)
            for v in variables:
                col[v.index] = float(self.warm.get(v.name, 0.0))
            sol = highspy.HighsSolution()
            sol.col_value = col
            sol.value_valid = True
            lp.solverModel.setSolution(sol)
        lp.solverModel.run()

    def findSolutionValues(self, lp: pulp.LpProblem) -> tuple[int, int]:  # PuLP's name
        try:
            return super().findSolutionValues(lp)  # type: ignore[no-any-return]
        except KeyError:  # a node limit stops HiGHS with kSolutionLimit, which PuLP does not map
            found = lp.solverModel.getInfo().primal_solution_status == 2
            return ((pulp.LpStatusOptimal, pulp.LpSolutionIntegerFeasible) if found
                    else (pulp.LpStatusNotSolved, pulp.LpSolutionNoSolutionFound))


def solve(prob: pulp.LpProblem, *, solver: str, warm: dict[str, float] | None,
          time_limit: float, gap: float, max_nodes: int | None = None, probing: bool = True) -> RawResult:
    """Solve ``prob`` (a minimisation); the bound includes the objective's constant.

    ``max_nodes`` caps the branch-and-bound nodes (a limit on work that, unlike time, gives
    the same answer on any machine); the best solution found by then is returned.
    ``probing``: let HiGHS's presolve probe (``NO_PROBING``).

    Raises:
        PlanError: unknown solver, or HiGHS asked for but highspy missing.
    """
    if solver not in SOLVERS:
        raise PlanError(f"unknown MIP solver {solver!r}", hint=f"choose one of {', '.join(SOLVERS)}")
    start = time.perf_counter()
    if solver == "highs":
        if not highs_available():
            raise PlanError("the HiGHS solver is not installed", hint="pip install highspy, or use solver='cbc'")
        quiet_highs()
        import highspy

        offset = float(prob.objective.constant)
        try:
            limits = {} if max_nodes is None else {"mip_max_nodes": max_nodes}
            prob.solve(_WarmHiGHS(warm, offset, msg=False, timeLimit=time_limit, gapRel=gap,
                                  gapAbs=0.0, probing=probing, **limits))
        except (IndexError, pulp.PulpSolverError):
            # HiGHS refused the model (PuLP then fails reading back its solution): use CBC
            return solve(prob, solver="cbc", warm=warm, time_limit=time_limit, gap=gap)
        h = prob.solverModel
        status = h.getModelStatus()
        if status in (highspy.HighsModelStatus.kSolveError, highspy.HighsModelStatus.kModelError,
                      highspy.HighsModelStatus.kPresolveError,
                      highspy.HighsModelStatus.kPostsolveError):
            # numerical trouble (seen with costs near the float range's ends): CBC instead
            return solve(prob, solver="cbc", warm=warm, time_limit=time_limit, gap=gap)
        info = h.getInfo()
        has_sol = info.primal_solution_status == 2  # kSolutionStatusFeasible
        bound = float(info.mip_dual_bound)
        if status == highspy.HighsModelStatus.kOptimal:
            kind = "optimal"
        elif status in (highspy.HighsModelStatus.kInfeasible,
                        highspy.HighsModelStatus.kUnboundedOrInfeasible):
            kind = "infeasible"
        else:
            kind = "feasible" if has_sol else "unsolved"
        if kind == "optimal" and (not prob.isMIP() or not math.isfinite(bound)):
            bound = float(info.objective_function_value)  # an LP: its optimum is the bound
        if not math.isfinite(bound):
            bound = -math.inf
    else:
        bound = _lp_bound(prob)
        for v in prob.variables():
            if warm is not None and v.name in warm:
                v.setInitialValue(warm[v.name])
        # CBC 2.10's preprocessing declares some feasible models infeasible ("Cut
        # generators found to be infeasible"), while without it CBC returns some models'
        # non-optimal answers as optimal: so ask with it, and again without it only
        # when it says infeasible (an answer without preprocessing is at least feasible)
        cbc = dict(msg=False, timeLimit=time_limit, gapRel=gap, warmStart=warm is not None,
                   maxNodes=max_nodes)
        prob.solve(pulp.PULP_CBC_CMD(**cbc))
        if prob.status == pulp.LpStatusInfeasible:
            try:
                prob.solve(pulp.PULP_CBC_CMD(**cbc, options=["preprocess off"]))
            except pulp.PulpSolverError:  # proven so early that CBC writes no solution file
                prob.solve(pulp.PULP_CBC_CMD(**cbc))
            if prob.status != pulp.LpStatusInfeasible and prob.sol_status == pulp.LpSolutionOptimal:
                prob.sol_status = pulp.LpSolutionIntegerFeasible  # found, not proven best
        if prob.status == pulp.LpStatusInfeasible:
            kind = "infeasible"
        elif prob.sol_status == pulp.LpSolutionOptimal:
            kind = "optimal"
        elif prob.sol_status == pulp.LpSolutionIntegerFeasible:
            kind = "feasible"
        else:
            kind = "unsolved"
    values: dict[str, float] = {}
    objective = math.inf
    if kind in ("optimal", "feasible"):
        values = {v.name: float(v.varValue or 0.0) for v in prob.variables()}
        objective = _value(prob)
        if solver == "cbc" and kind == "optimal":
            # CBC stopped within gapRel of its own bound, which PuLP does not report
            bound = max(bound, objective - gap * abs(objective))
    return RawResult(status=kind, values=values, bound=bound, objective=objective,
                     seconds=time.perf_counter() - start)


def _lp_bound(prob: pulp.LpProblem) -> float:
    """The LP relaxation's optimum (a lower bound on the MIP).

    PuLP does not expose CBC's own MIP bound; the LP bound is weaker but proven.
    """
    prob.solve(pulp.PULP_CBC_CMD(msg=False, mip=False))
    if prob.status != pulp.LpStatusOptimal:
        return -math.inf
    return _value(prob)


def _value(prob: pulp.LpProblem) -> float:
    """The objective at the current variable values (PuLP gives None for a constant one)."""
    value = pulp.value(prob.objective)
    return float(prob.objective.constant if value is None else value)
