"""Run a PuLP model on HiGHS (warm-started, with its proven bound) or on PuLP's bundled CBC."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

import pulp

from autopipe.errors import PlanError
from autopipe.partition import _highs as _highs_process

SOLVERS = ("highs", "cbc")
OVERRUN, OVERRUN_S = 1.5, 5.0
"""A HiGHS solve asked for ``t`` seconds is killed after ``OVERRUN * t + OVERRUN_S`` and CBC
asked instead ([Note: a solver held to its deadline] in ``autopipe.partition._highs``)."""


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


NO_PROBING = 1 << 15
"""HiGHS's ``presolve_rule_off`` bit for probing. With recomputation's rows, HiGHS 1.16's
probing ran for minutes past the time limit on the Llama-2-7B benchmark (400 blocks, 8
stages: it stopped in presolve after 5 min at a 60 s limit); without it the same solve was
optimal in 26 s."""


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
        try:  # [Note: a solver held to its deadline] in autopipe.partition._highs
            found = _highs(prob, warm=warm, time_limit=time_limit, gap=gap, max_nodes=max_nodes,
                           probing=probing)
        except (_highs_process.Overran, RuntimeError):
            found = None
        if found is None:  # refused, failed numerically, or overran its limit: CBC instead
            return solve(prob, solver="cbc", warm=warm, time_limit=time_limit, gap=gap)
        return dataclasses.replace(found, seconds=time.perf_counter() - start)
    bound = _lp_bound(prob) if prob.isMIP() else -math.inf  # an LP's is its optimum, below
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
    result = _result(prob, kind, bound, start)
    if kind == "optimal":  # a MIP: CBC stopped within gapRel of its own bound, which PuLP does not report
        proven = (max(bound, result.objective - gap * abs(result.objective)) if prob.isMIP()
                  else result.objective)
        result = dataclasses.replace(result, bound=proven)
    return result


CONFIRM_S = 1.0
CONFIRM_SHARE = 0.25
"""A model HiGHS's presolve calls infeasible is solved again without presolve for at most
max(``CONFIRM_S``, ``CONFIRM_SHARE`` × its time limit), within what is left of it."""

# [Note: HiGHS's presolve says infeasible]
# HiGHS 1.16's presolve can call a feasible MIP infeasible. hypothesis found one
# (tests/test_partition_recompute.py, 2026-12-06): 5 nodes of zero time, 2 stages under
# GPipe, the second with a 38,108-byte limit, recomputation ``auto``. Brute force and CBC
# found splits with room to spare (26.7 KB on the limited stage), and HiGHS with presolve
# off solved it at once; with presolve on, its answer was kInfeasible. The planner would
# then have said that no partition fits, though the chain DP had just found one. (CBC's
# preprocessing has the same failing: the CBC branch of ``solve``.) So an infeasible answer is checked
# by a solve without presolve, for a bounded share of the time limit: a solution found
# there is the answer; none leaves the answer infeasible.


def _highs(prob: pulp.LpProblem, *, warm: dict[str, float] | None, time_limit: float, gap: float,
           max_nodes: int | None, probing: bool) -> RawResult | None:
    """HiGHS's answer for ``prob``; None where it failed numerically.

    Raises:
        Overran: HiGHS did not answer within ``OVERRUN * time_limit + OVERRUN_S`` seconds.
        RuntimeError: HiGHS's process failed.
    """
    import highspy

    start = time.perf_counter()
    options: dict[str, Any] = {"time_limit": float(time_limit), "mip_rel_gap": gap, "mip_abs_gap": 0.0}
    if max_nodes is not None:
        options["mip_max_nodes"] = max_nodes
    if not probing:
        options["presolve_rule_off"] = NO_PROBING
    reply = _highs_process.run(prob, options, warm, time_limit * OVERRUN + OVERRUN_S)
    if warm is not None and not _values_match(prob, reply):
        # [Note: HiGHS's values from a warm start]
        warmed = reply
        reply = _highs_process.run(prob, options, None, time_limit * OVERRUN + OVERRUN_S)
        if not reply["has_solution"] or not _values_match(prob, reply):
            reply = warmed
            for v, x in zip(prob.variables(), reply["values"]):
                v.varValue = x
    status = highspy.HighsModelStatus(reply["status"])
    infeasible = (highspy.HighsModelStatus.kInfeasible, highspy.HighsModelStatus.kUnboundedOrInfeasible)
    left = time_limit - (time.perf_counter() - start)
    if status in infeasible and left > 0:
        # [Note: HiGHS's presolve says infeasible]
        again = _highs_process.run(prob, {**options, "presolve": "off",
                                          "time_limit": min(left, max(CONFIRM_S, CONFIRM_SHARE * time_limit))},
                                   warm, time_limit * OVERRUN + OVERRUN_S)
        if again["has_solution"]:
            reply = again
            status = highspy.HighsModelStatus(reply["status"])
    if status in (highspy.HighsModelStatus.kSolveError, highspy.HighsModelStatus.kModelError,
                  highspy.HighsModelStatus.kPresolveError,
                  highspy.HighsModelStatus.kPostsolveError):
        return None  # numerical trouble (seen with costs near the float range's ends)
    bound = reply["bound"]
    if status == highspy.HighsModelStatus.kOptimal:
        kind = "optimal"
    elif status in infeasible:
        kind = "infeasible"
    else:
        kind = "feasible" if reply["has_solution"] else "unsolved"
    if kind == "optimal" and (not prob.isMIP() or not math.isfinite(bound)):
        bound = reply["objective"]  # an LP: its optimum is the bound
    if not math.isfinite(bound):
        bound = -math.inf
    return _result(prob, kind, bound, start)


def _values_match(prob: pulp.LpProblem, reply: dict[str, Any]) -> bool:
    """Whether the values HiGHS returned (set on ``prob``'s variables) give the objective it
    reported.

    [Note: HiGHS's values from a warm start]
    HiGHS 1.16, handed a warm start (``setSolution``), can report the objective of a better
    solution it found while returning the warm start's values: a tie-breaking solve of a
    6-block, 2-stage model said 3.0 (its bound too) and returned the columns of a partition
    whose memory share is 6.0; solved cold it returned that 3.0 partition, as CBC did. Such
    an answer is solved again without the warm start, and kept where that does not agree
    either.
    """
    if not reply["has_solution"] or not math.isfinite(reply["objective"]):
        return True
    got, said = _value(prob), float(reply["objective"])
    return abs(got - said) <= 1e-6 * max(1.0, abs(got), abs(said))


def _result(prob: pulp.LpProblem, kind: str, bound: float, start: float) -> RawResult:
    """The answer of a solve that ended in ``kind``, read from ``prob``'s variables."""
    values: dict[str, float] = {}
    objective = math.inf
    if kind in ("optimal", "feasible"):
        values = {v.name: float(v.varValue or 0.0) for v in prob.variables()}
        objective = _value(prob)
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
