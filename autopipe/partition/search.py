"""The search over candidates (micro-batch counts × schedules): cheap ones first, each MIP
with a share of the time, and no MIP for a candidate that cannot beat the best so far.

    candidates ─► not runnable / too few blocks: recorded with why
               ─► the others, one chunk per rank first, then by lower bound (``step_bound``)
               ─► each in turn: bound ≥ best so far?  skip, record the bound
                                else solve (time limit: its share; MIP cutoff: the best)
               ─► time left? the open ones (bound < best step), lowest bound first, again:
                  from their partition, cut off at the best ([Note: a second pass])
               ─► the fastest; ties to the earlier candidate (fewer micro-batches, then
                  the schedule order); every candidate's row in ``options["search"]``

[Note: the search's order and shares]

A GPT-2 medium batch search (H100 estimate, 4 stages, 20 GiB, batch 64) has 42
candidates; with interleaved 1F1B, ZBV and DualPipeV each chunked MIP ran to its time
limit (60 s, never proving its gap within 0.1%), and memory-bound 1F1B and GPipe
candidates at m = 4–64 spent 23–62 s each choosing recomputation: past 32 minutes. Now
the candidates with one stage per rank go first, in order of their lower bound: their
MIPs are quick (0.1–1.7 s), and their best step becomes every later MIP's cutoff ([Note: a
cutoff] in ``autopipe.partition.ilp``). Then a candidate is skipped where its bound is at
least the best step (the path bound sees 1F1B's and GPipe's fill and drain: all of them
but m = 32 skip there), and every candidate's MIPs share the time limit / candidates, at
least ``SEARCH_MIN_S`` and at most what is left of the time limit ([Note: a candidate's
time] in ``autopipe.partition.planner``): the search's MIPs end within ``time_limit``.
So the answer is exact where a candidate was skipped or proven beaten,
and otherwise each candidate's row says its status and lower bound: ``lower_bound_s`` of
the search is the least over the candidates not ruled out, what its gap is measured from.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from autopipe._units import format_seconds
from autopipe.errors import AutopipeError, InfeasiblePlanError, PlanError
from autopipe.plan_format import Plan

SEARCH_MIN_S = 5.0
"""Each candidate's MIP solves share ``time_limit`` / candidates, at least this (but never
more than is left of ``time_limit``): each starts from the best heuristic split, so a
short share costs gap, not a plan that fits."""


SECOND_PASS_MIN_S = 1.0
"""A second pass ([Note: a second pass]) starts only with this much of the time limit left."""


class Beaten(AutopipeError):
    """No partition of a candidate that fits is faster than the step to beat (proven)."""

    def __init__(self, bound: float, beat: float) -> None:
        super().__init__(f"cannot win: no partition that fits is faster than {_s(beat)} "
                         f"(the MIP's cutoff)")
        self.bound = bound


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidate:
    """One micro-batch count and schedule of a search, ready to solve."""

    row: dict[str, Any]
    """What the search records of it: ``microbatches``, ``schedule``, ``virtual_stages``
    (with several chunks per rank), ``microbatch_size`` (with a batch size)."""
    order: int
    """Its place in the tie order: fewer micro-batches first, then the schedule order."""
    chunked: bool = False
    """Several chunks per rank: its MIP is slower, so it comes after the others."""
    bound: float = 0.0
    """A lower bound on its step (``bounds.step_bound``)."""
    why: str | None = None
    """Why it is not planned (torch cannot run it, too few blocks); None to plan it."""
    solve: Callable[[float, float, Plan | None], Plan] | None = None
    """``(step to beat, seconds, a plan of its own to start from) -> Plan``; raises
    InfeasiblePlanError (nothing fits), Beaten, or PlanError (nothing found in the time)."""


def search(candidates: list[Candidate], time_limit: float, *, timed: bool = False) -> Plan:
    """The fastest plan over ``candidates``, with every candidate's row in ``options["search"]``
    and the search's lower bound in ``options["search_lower_bound_s"]``. What is left of
    ``time_limit`` after the first pass goes to the candidates still open ([Note: a second
    pass]). ``timed``: each solved row records its ``seconds`` too (not byte-reproducible).
    Each candidate's MIP solves end within its share, and the search's within ``time_limit``.

    Raises:
        InfeasiblePlanError: no candidate fits (the first one's error, in tie order).
        PlanError: torch runs none of them, or no MIP found a partition in its share.
    """
    begun = time.perf_counter()
    todo = [c for c in candidates if c.why is None and c.solve is not None]
    share = min(time_limit, max(SEARCH_MIN_S, time_limit / max(1, len(todo))))
    rows = {c.order: {**c.row, "iteration_s": None, "why": c.why} for c in candidates if c.why}
    best: tuple[Plan, Candidate] | None = None
    plans: dict[int, Plan] = {}
    errors: dict[int, AutopipeError] = {}
    seconds: dict[int, float] = {}
    for c in sorted(todo, key=lambda c: (c.chunked, c.bound, c.order)):
        assert c.solve is not None
        beat = math.inf if best is None else best[0].predicted.iteration_s
        if best is not None and (c.bound, c.order) > (beat, best[1].order):
            rows[c.order] = {**c.row, "iteration_s": None, "lower_bound_s": c.bound,
                             "status": "skipped",
                             "why": f"cannot win: its lower bound {_s(c.bound)} ≥ the best step "
                                    f"found, {_s(beat)}"}
            continue
        start = time.perf_counter()
        try:
            plan = c.solve(beat, min(share, max(0.0, begun + time_limit - start)), None)
        except Beaten as e:
            rows[c.order] = {**c.row, "iteration_s": None, "lower_bound_s": max(c.bound, e.bound),
                             "status": "beaten", "why": e.message}
            continue
        except InfeasiblePlanError as e:
            errors[c.order] = e
            rows[c.order] = {**c.row, "iteration_s": None, "status": "infeasible", "why": e.message}
            continue
        except PlanError as e:  # the MIP found no partition in its share
            errors[c.order] = e
            rows[c.order] = {**c.row, "iteration_s": None, "lower_bound_s": c.bound,
                             "status": "unsolved", "why": e.message}
            continue
        finally:
            if timed:
                seconds[c.order] = time.perf_counter() - start
        step, lower = plan.predicted.iteration_s, max(c.bound, plan.solver.lower_bound_s)
        status = _status(plan, lower, beat)
        rows[c.order] = {**c.row, "iteration_s": step, "bubble_fraction": plan.predicted.bubble_fraction,
                         "lower_bound_s": lower, "status": status}
        plans[c.order] = plan
        if best is None or (step, c.order) < (best[0].predicted.iteration_s, best[1].order):
            best = (plan, c)
    if best is not None:
        best = _second_pass(todo, rows, plans, best, begun + time_limit, timed=timed)
    tried = [{**rows[k], **({"seconds": seconds[k]} if k in seconds else {})} for k in sorted(rows)]
    if best is None:
        infeasible = [k for k in sorted(errors) if isinstance(errors[k], InfeasiblePlanError)]
        if infeasible:
            error, m = errors[infeasible[0]], rows[infeasible[0]]["microbatches"]
            raise InfeasiblePlanError(
                f"no candidate fits ({len(tried)} tried); with {m} micro-batches: "
                f"{error.message}", hint=error.hint)
        if errors:
            error = errors[min(errors)]
            raise PlanError(f"no candidate has a plan ({len(tried)} tried): {error.message}",
                            hint=error.hint)
        raise PlanError(f"torch runs none of the {len(tried)} candidates: {tried[0]['why']}",
                        hint="use more micro-batches (a bigger batch), or fewer stages")
    plan = best[0]
    # skipped and beaten candidates' bounds are at least the step: only the open ones lower it
    lower = min([plan.solver.lower_bound_s, *(float(r["lower_bound_s"]) for r in tried if "lower_bound_s" in r)])
    return replace(plan, options={**plan.options, "search": tried,
                                  "search_lower_bound_s": min(lower, plan.predicted.iteration_s)})


def _second_pass(todo: list[Candidate], rows: dict[int, dict[str, Any]], plans: dict[int, Plan],
                 best: tuple[Plan, Candidate], deadline: float, *,
                 timed: bool) -> tuple[Plan, Candidate]:
    """Spend what is left of the time limit on the candidates still open ([Note: a second
    pass]); updates ``rows`` and ``plans``, returns the best plan and its candidate."""
    def is_open(k: int) -> bool:
        row = rows[k]
        return (row.get("status") in ("feasible", "unsolved")
                and float(row["lower_bound_s"]) < best[0].predicted.iteration_s)

    queue = sorted((c for c in todo if is_open(c.order)),
                   key=lambda c: (float(rows[c.order]["lower_bound_s"]), c.order))
    for i, c in enumerate(queue):
        assert c.solve is not None
        left = deadline - time.perf_counter()
        if left < SECOND_PASS_MIN_S:
            break
        row, beat, first = rows[c.order], best[0].predicted.iteration_s, plans.get(c.order)
        if not is_open(c.order):  # a better step found meanwhile rules it out
            continue
        share = left / (len(queue) - i)
        start = time.perf_counter()
        status: str
        try:
            plan: Plan | None = c.solve(beat, share, first)
        except Beaten as e:
            plan, status = None, "beaten"
            row["lower_bound_s"] = max(float(row["lower_bound_s"]), e.bound)
            if first is None:
                row["why"] = e.message
        except PlanError:  # nothing new in its time (InfeasiblePlanError: cannot, it had a bound)
            plan, status = None, str(row["status"])
        if plan is not None:
            lower = max(float(row["lower_bound_s"]), plan.solver.lower_bound_s)
            if first is not None and first.predicted.iteration_s <= plan.predicted.iteration_s:
                plan = first
            plan = _with_bound(plan, lower)
            plans[c.order] = plan
            step = plan.predicted.iteration_s
            status = _status(plan, lower, beat)
            row.update(iteration_s=step, bubble_fraction=plan.predicted.bubble_fraction,
                       lower_bound_s=lower, why=None)
            if best[1] is c or (step, c.order) < (beat, best[1].order):
                best = (plan, c)
        elif status == "beaten" and first is not None:
            status = "beaten" if first.predicted.iteration_s > beat else str(row["status"])
        row["status"] = status
        row["second_pass"] = {"status": status, "lower_bound_s": row["lower_bound_s"],
                              **({"seconds": time.perf_counter() - start, "time_s": share}
                                 if timed else {})}
    return best


def _status(plan: Plan, lower: float, beat: float) -> str:
    """A solved candidate's status: ``beaten`` where its MIP proved nothing beats the cutoff
    ``beat`` (its step is then its heuristic start's), else its solver's."""
    step = plan.predicted.iteration_s
    return "beaten" if lower >= beat and step > beat else plan.solver.status


def _with_bound(plan: Plan, lower: float) -> Plan:
    """``plan`` with ``lower`` as its solver's lower bound where that is higher (a second
    solve's bound and the first's both hold), its gap and status to match."""
    info = plan.solver
    lower = min(max(lower, info.lower_bound_s), info.objective_s)
    if lower <= info.lower_bound_s:
        return plan
    gap = (info.objective_s - lower) / info.objective_s if info.objective_s > 0 else 0.0
    status = "optimal" if gap <= float(plan.options.get("mip_gap", 0.0)) else info.status
    return replace(plan, solver=replace(info, lower_bound_s=lower, gap=gap, status=status))


# [Note: a second pass]
#
# The first pass gives each MIP the time limit / candidates, and most finish well inside
# it (proven beaten, or optimal): on the GPT-2 medium batch search the MIPs used 25 s of
# 60. Where candidates are still open afterwards (their lower bound under the best step:
# the best one's own gap, a chunked MIP stopped at its share, one that found nothing),
# the time left goes to them, the lowest bound first, each an equal part of what is left
# (unused time rolls on to the next), started from its own first-pass partition and cut
# off at the best step. A candidate ruled out meanwhile by a better step is not solved.
# Each re-solved row keeps its final status, step and bound, and ``second_pass`` says
# what the second solve found; the search's lower bound is then the least bound of the
# candidates still open, so its gap is what is really known.


def _s(seconds: float) -> str:
    return format_seconds(seconds)
