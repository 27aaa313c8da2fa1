"""Tests for the planner's search: ``microbatches="auto"`` over divisors of the batch size,
each with its own profile, and ``schedule="auto"``."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

import autopipe.partition.planner as planner
from autopipe._units import format_seconds
from autopipe.errors import InfeasiblePlanError, PlanError
from autopipe.partition.ilp import IlpResult, solve_ilp
from autopipe.partition.planner import plan_profile
from autopipe.partition.problem import SCHEDULES
from autopipe.partition.search import SEARCH_MIN_S
from autopipe.partition.synthetic import synthetic_profile
from autopipe.profile.profile import Profile
from autopipe.report import search_lines

from .mip_clock import Clock, to_the_limit

BASE = synthetic_profile(40, seed=5)
OVERHEAD_S = 2e-3
"""Per-node fixed time: small micro-batches pay it more often, so they are not free."""


def at_size(size: int) -> Profile:
    """BASE as if measured on micro-batches of ``size`` samples: time = overhead + size ×
    the per-sample time, activation and output bytes proportional to ``size``."""
    nodes = tuple(dataclasses.replace(
        n, forward_s=(OVERHEAD_S + size * n.forward_s) if n.forward_s else 0.0,
        backward_input_s=(OVERHEAD_S + size * n.backward_input_s) if n.backward_input_s else 0.0,
        backward_weight_s=size * n.backward_weight_s, activation_bytes=size * n.activation_bytes,
        output_bytes=size * n.output_bytes) for n in BASE.nodes)
    edges = tuple((a, b, size * x) for a, b, x in BASE.edges)
    return dataclasses.replace(BASE, nodes=nodes, edges=edges, microbatch_shape=[[size]],
                               graph_fingerprint=f"synthetic-size-{size}")


def counting(calls: list[int]):  # type: ignore[no-untyped-def]
    def source(size: int) -> Profile:
        calls.append(size)
        return at_size(size)
    return source


def test_auto_microbatches_is_the_best_divisor() -> None:
    calls: list[int] = []
    plan = plan_profile(counting(calls), num_stages=2, batch_size=24, microbatches="auto",
                        method="dp")
    divisors = [1, 2, 3, 4, 6, 8, 12, 24]
    assert sorted(calls) == sorted(24 // m for m in divisors[1:])  # m = 1 < p: 1F1B can't run it
    tried = plan.options["search"]
    assert [t["microbatches"] for t in tried] == divisors
    steps = {m: plan_profile(at_size(24 // m), num_stages=2, microbatches=m, method="dp")
             for m in divisors[1:]}
    best = min(steps, key=lambda m: steps[m].predicted.iteration_s)
    assert plan.microbatches == best and 1 < best < 24  # overheads against the bubble
    assert plan.predicted.iteration_s == steps[best].predicted.iteration_s
    assert plan.options["microbatch_size"] == 24 // best and plan.options["batch_size"] == 24
    assert plan.graph_fingerprint == f"synthetic-size-{24 // best}"
    for t in tried[1:]:  # planned as alone, or skipped where it cannot win
        alone = steps[t["microbatches"]].predicted.iteration_s
        if t["iteration_s"] is None:
            assert t["status"] == "skipped" and "cannot win" in t["why"]
            assert alone >= t["lower_bound_s"] >= plan.predicted.iteration_s
        else:
            assert t["iteration_s"] == pytest.approx(alone)
    assert any(t.get("status") == "skipped" for t in tried)


def test_batch_size_alone_means_auto() -> None:
    plan = plan_profile(at_size, num_stages=2, batch_size=8, method="dp")
    assert [t["microbatches"] for t in plan.options["search"]] == [1, 2, 4, 8]


def test_memory_limit_makes_micro_batches_smaller() -> None:
    big = plan_profile(at_size(16), num_stages=2, microbatches=2, method="dp")
    limit = int(max(s.memory.total for s in big.stages) * 0.6)
    with pytest.raises(InfeasiblePlanError):
        plan_profile(at_size(16), num_stages=2, microbatches=2, memory_limit=limit, method="dp")
    plan = plan_profile(at_size, num_stages=2, batch_size=32, memory_limit=limit, method="dp")
    assert plan.microbatches > 2
    assert all(s.memory.total <= limit for s in plan.stages)
    two = next(t for t in plan.options["search"] if t["microbatches"] == 2)
    assert two["iteration_s"] is None  # does not fit, or (bubble) cannot win
    assert "fits" in two["why"] or two["status"] == "skipped"


def test_nothing_fits_names_the_candidates() -> None:
    # 1 micro-batch is not runnable under 1F1B with 2 stages: the first that does not fit is 2
    with pytest.raises(InfeasiblePlanError, match=r"no candidate fits \(3 tried\); with 2 micro-batches"):
        plan_profile(at_size, num_stages=2, batch_size=4, memory_limit=1024, method="dp")


def test_schedule_auto_is_the_fastest_schedule() -> None:
    plan = plan_profile(at_size(4), num_stages=3, microbatches=6, schedule="auto", method="dp")
    each = {s: plan_profile(at_size(4), num_stages=3, microbatches=6, schedule=s, method="dp")
            for s in SCHEDULES}
    # interleaved 1F1B, ZBV and DualPipeV last, with 2 chunks per rank ([Note: chunks])
    tried = ("1f1b", "zb-h1", "gpipe", "interleaved-1f1b", "zbv", "dualpipev")
    assert [t["schedule"] for t in plan.options["search"]] == [s for s in tried if s in SCHEDULES]
    assert [t.get("virtual_stages") for t in plan.options["search"]] == [None] * 3 + [2, 2, 2]
    assert each["interleaved-1f1b"].num_stages == each["zbv"].num_stages == each["dualpipev"].num_stages == 6
    fastest = min(each.values(), key=lambda p: p.predicted.iteration_s)
    assert plan.predicted.iteration_s == fastest.predicted.iteration_s
    assert plan.schedule == min(each, key=lambda s: (each[s].predicted.iteration_s, tried.index(s)))


def test_schedule_auto_gives_virtual_stages_to_the_interleaved_candidate_only() -> None:
    """Until 2026-12-07 `--schedule auto --virtual-stages 3` tried 1f1b, zb-h1 and gpipe with 3
    chunks a rank, which each refused, and picked among the multi-chunk schedules alone."""
    plan = plan_profile(at_size(4), num_stages=2, microbatches=4, schedule="auto", method="dp",
                        virtual_stages=3)
    rows = {t["schedule"]: t for t in plan.options["search"]}
    assert {s: rows[s].get("virtual_stages") for s in rows} == {
        "1f1b": None, "zb-h1": None, "gpipe": None, "interleaved-1f1b": 3, "zbv": 2, "dualpipev": 2}
    assert not any("virtual stages" in str(rows[s].get("why")) for s in ("1f1b", "zb-h1", "gpipe")), rows
    assert rows["1f1b"]["iteration_s"] is not None, rows
    plain = plan_profile(at_size(4), num_stages=2, microbatches=4, schedule="auto", method="dp")
    assert plan.predicted.iteration_s <= plain.predicted.iteration_s


def test_schedule_auto_tries_dualpipev_only_where_torch_runs_it() -> None:
    """DualPipeV needs m ≥ 2p: with 3 ranks and 4 micro-batches the search records why not."""
    plan = plan_profile(at_size(4), num_stages=3, microbatches=4, schedule="auto", method="dp")
    row = next(t for t in plan.options["search"] if t["schedule"] == "dualpipev")
    assert row["iteration_s"] is None and "at least as many micro-batches as stages" in row["why"]


def test_fixed_count_profiles_its_micro_batch() -> None:
    calls: list[int] = []
    plan = plan_profile(counting(calls), num_stages=2, batch_size=12, microbatches=3, method="dp")
    assert calls == [4] and plan.options["microbatch_size"] == 4 and "search" not in plan.options


@pytest.mark.parametrize("kwargs, message", [
    ({"microbatches": "auto"}, "needs the batch size"),
    ({"microbatches": 5, "batch_size": 12}, "do not divide the batch of 12"),
    ({"batch_size": 0}, "batch_size = 0"),
    ({"schedule": "fastest"}, "unknown schedule"),
])
def test_bad_options(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(PlanError, match=message):
        plan_profile(BASE, num_stages=2, **kwargs)  # type: ignore[arg-type]


def test_auto_needs_a_profile_per_size() -> None:
    with pytest.raises(PlanError, match="only one profile was given"):
        plan_profile(BASE, num_stages=2, batch_size=8, microbatches="auto")


def test_a_profile_function_needs_the_batch_size() -> None:
    with pytest.raises(PlanError, match="needs the batch size"):
        plan_profile(at_size, num_stages=2)


def test_a_search_skips_a_chunked_candidate_that_cannot_win() -> None:
    """[Note: the search's order and shares]: interleaved 1F1B at m = 4 on 2 ranks has a
    lower bound over ZBV's step, so its MIP is never run; planned alone, it is indeed slower."""
    plan = plan_profile(at_size(4), num_stages=2, microbatches=4, schedule="auto", time_limit=12)
    rows = {t["schedule"]: t for t in plan.options["search"]}
    skipped = rows["interleaved-1f1b"]
    assert skipped["status"] == "skipped" and skipped["iteration_s"] is None
    assert "cannot win" in skipped["why"] and skipped["virtual_stages"] == 2
    assert skipped["lower_bound_s"] >= plan.predicted.iteration_s
    alone = plan_profile(at_size(4), num_stages=2, microbatches=4, schedule="interleaved-1f1b")
    assert alone.predicted.iteration_s >= skipped["lower_bound_s"] * (1 - 1e-9)
    assert plan.options["search_lower_bound_s"] <= plan.predicted.iteration_s
    lines = "\n".join(search_lines(plan))
    assert f">= {format_seconds(skipped['lower_bound_s'])}" in lines and "skipped by their lower bound" in lines


@pytest.mark.parametrize("time_limit, share", [(60.0, 10.0), (12.0, SEARCH_MIN_S), (3.0, 3.0)])
def test_each_candidate_gets_its_share_of_the_time(monkeypatch: pytest.MonkeyPatch,
                                                   time_limit: float, share: float) -> None:
    """6 runnable candidates: each candidate's MIP solves share time_limit / 6, at least
    SEARCH_MIN_S, at most the time limit; the plan records its share."""
    limits: list[float] = []

    def solve(*args: Any, **kwargs: Any) -> IlpResult:
        limits.append(kwargs["time_limit"])
        return solve_ilp(*args, **kwargs)

    monkeypatch.setattr(planner, "solve_ilp", solve)
    plan = plan_profile(at_size(4), num_stages=2, microbatches=4, schedule="auto", time_limit=time_limit)
    assert sum("status" in t for t in plan.options["search"]) == 6  # runnable
    assert limits and limits[0] == pytest.approx(share, abs=0.5)
    assert all(x <= share for x in limits)
    assert plan.options["time_share_s"] <= share
    assert plan.options["time_limit"] == time_limit


def test_a_search_ends_within_its_time_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """[Note: a candidate's time]: with every MIP running to its limit, the candidates take
    their shares (5 s) while the time lasts, the next gets what is left and the rest none;
    a candidate with no time keeps its heuristic start, and the search's bound its own."""
    import autopipe.partition.search as search_mod

    clock, limits = Clock(), []
    monkeypatch.setattr(planner, "solve_ilp", to_the_limit(clock, limits, solve_ilp))
    monkeypatch.setattr(planner, "time", clock)
    monkeypatch.setattr(search_mod, "time", clock)
    plan = plan_profile(at_size(4), num_stages=2, microbatches=4, schedule="auto", time_limit=12)
    # zb-h1, 1f1b (beaten), zbv, dualpipev; gpipe and interleaved 1F1B skipped by their bounds
    assert limits == [SEARCH_MIN_S, SEARCH_MIN_S, pytest.approx(2.0), 0.0]
    rows = {t["schedule"]: t for t in plan.options["search"]}
    assert rows["dualpipev"]["status"] == "feasible" and rows["dualpipev"]["iteration_s"] is not None
    assert clock.now == pytest.approx(12.0)
    assert not any("second_pass" in t for t in plan.options["search"])  # no time left for one
    assert plan.options["search_lower_bound_s"] <= plan.predicted.iteration_s


def test_a_candidate_with_no_partition_in_its_share_is_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunked MIP that finds nothing in its time: the row says so, the search goes on,
    and the search's lower bound counts that candidate's bound (it might have won)."""
    def solve(problem: Any, **kwargs: Any) -> IlpResult:
        if problem.config.virtual_stages > 1:
            return IlpResult(stage_of=None, status="unsolved", objective_s=math.inf, lower_bound_s=0.0,
                             model_objective_s=math.nan, seconds=0.0, solver="highs", binaries=0, rounds=1)
        return solve_ilp(problem, **kwargs)

    monkeypatch.setattr(planner, "solve_ilp", solve)
    plan = plan_profile(at_size(4), num_stages=2, microbatches=4, schedule="auto", time_limit=12)
    rows = {t["schedule"]: t for t in plan.options["search"]}
    chunked = [rows[s] for s in ("interleaved-1f1b", "zbv", "dualpipev")]
    assert plan.schedule == "zb-h1" and all(t["status"] == "unsolved" for t in chunked)
    assert all("found no partition in 5 s" in t["why"] for t in chunked)
    assert plan.options["search_lower_bound_s"] == pytest.approx(min(t["lower_bound_s"] for t in chunked))
    assert plan.options["search_lower_bound_s"] < plan.predicted.iteration_s
    assert "3 unsolved in their time" in "\n".join(search_lines(plan))


def _stopping_first(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, float | None]]:
    """Make each candidate's first MIP stop at once with its start (a MIP out of time: status
    ``feasible``, the bound ``step_bound``); later solves are real. Returns the solves made:
    (schedule, chunks, cutoff)."""
    from autopipe.partition.bounds import step_bound
    from autopipe.partition.costs import evaluate

    seen: set[tuple[str, int, str]] = set()
    calls: list[tuple[str, int, float | None]] = []

    def solve(problem: Any, **kwargs: Any) -> IlpResult:
        cfg = problem.config
        key = (cfg.schedule, cfg.virtual_stages, cfg.recompute)
        calls.append((cfg.schedule, cfg.virtual_stages, kwargs.get("cutoff")))
        start = kwargs.get("incumbent")
        if key in seen or start is None:
            return solve_ilp(problem, **kwargs)
        seen.add(key)
        return IlpResult(stage_of=tuple(start), status="feasible",
                         objective_s=evaluate(problem, start).objective_s,
                         lower_bound_s=step_bound(problem), model_objective_s=math.nan, seconds=0.0,
                         solver="highs", binaries=0, rounds=1)

    monkeypatch.setattr(planner, "solve_ilp", solve)
    return calls


def test_a_second_pass_closes_the_gap_with_the_time_left(monkeypatch: pytest.MonkeyPatch) -> None:
    """[Note: a second pass]: every first MIP stops early, so the candidates whose bound is
    under the best step stay open; the time left re-solves them (lowest bound first, cut off
    at the best step), and the search ends where a long solve of each candidate does."""
    calls = _stopping_first(monkeypatch)
    plan = plan_profile(at_size(4), num_stages=2, microbatches=4, schedule="auto", time_limit=30,
                        deterministic=False)
    monkeypatch.undo()
    alone = {s: plan_profile(at_size(4), num_stages=2, microbatches=4, schedule=s)
             for s in ("1f1b", "zb-h1", "gpipe", "interleaved-1f1b", "zbv", "dualpipev")}
    fastest = min(p.predicted.iteration_s for p in alone.values())
    assert plan.predicted.iteration_s == pytest.approx(fastest)
    rows = [t for t in plan.options["search"] if "second_pass" in t]
    assert rows, "no candidate was open after the first pass"
    firsts = len({(s, v) for s, v, _ in calls})
    assert len(calls) > firsts  # the open candidates were solved again
    assert all(cut is not None for _, _, cut in calls[firsts:])  # cut off at the best step
    for t in rows:
        assert t["status"] in ("optimal", "beaten") and t["second_pass"]["status"] == t["status"]
        assert t["second_pass"]["seconds"] <= t["second_pass"]["time_s"] + 1.0
        solo = alone[t["schedule"]].predicted.iteration_s
        assert t["lower_bound_s"] <= solo * (1 + 1e-9)
        if t["status"] == "optimal":
            assert t["iteration_s"] == pytest.approx(solo)
    assert plan.solver.status == "optimal"
    assert plan.options["search_lower_bound_s"] >= plan.predicted.iteration_s * (1 - 2e-3)


def test_no_second_pass_without_time_left(monkeypatch: pytest.MonkeyPatch) -> None:
    """With under ``SECOND_PASS_MIN_S`` left the open candidates stay open, and the search's
    gap says so."""
    _stopping_first(monkeypatch)
    plan = plan_profile(at_size(4), num_stages=2, microbatches=4, schedule="auto", time_limit=0.5)
    assert not any("second_pass" in t for t in plan.options["search"])
    assert any(t.get("status") == "feasible" for t in plan.options["search"])
    assert plan.options["search_lower_bound_s"] < plan.predicted.iteration_s
