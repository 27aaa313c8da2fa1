"""Tests for planning the zero-bubble schedule zb-h1 (autopipe/partition/): in-flight counts
from the schedule's order, the ILP against brute force, plans, memory and the command line.

The timeline's longest path against the simulator, for zb-h1 too, is in
tests/test_partition_timeline.py; plans on random DAGs for every schedule in
tests/test_partition_planner.py; a planned zb-h1 plan training on two gloo ranks is the
``mlp-2-zb-h1`` case of tests/test_runtime_train.py.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from autopipe.errors import InfeasiblePlanError, PlanError
from autopipe.partition import brute
from autopipe.partition.chain import Chain
from autopipe.partition.costs import evaluate, violations
from autopipe.partition.dp import min_bottleneck, min_memory
from autopipe.partition.ilp import solve_ilp
from autopipe.partition.infeasible import explain
from autopipe.partition.planner import plan_profile
from autopipe.partition.problem import MULTI_CHUNK, SCHEDULES, Config, from_profile
from autopipe.partition.synthetic import synthetic_profile
from autopipe.plan_format import Device, Plan
from autopipe.schedule.actions import check_runnable, check_schedule
from autopipe.schedule.simulate import StageCost, simulate
from tests.partition_cases import Case, cases

ZB = ("zb-h1",)


def _devices(p: int, memory: int = 0) -> tuple[Device, ...]:
    return tuple(Device(name=f"d{i}", memory=memory) for i in range(p))


def _config(p: int, m: int, schedule: str = "zb-h1", memory: int = 0) -> Config:
    return Config(num_stages=p, microbatches=m, schedule=schedule, devices=_devices(p, memory),
                  link_bandwidth=25e9)


def test_inflight_comes_from_the_order() -> None:
    """1F1B min(m, p−s) and GPipe m as before; zb-h1 holds min(m, p) on every stage (each W
    runs s backwards late); all equal the simulator's peak."""
    rng = random.Random(0)
    for schedule in (s for s in SCHEDULES if s not in MULTI_CHUNK):  # chunks: test_partition_chunks
        for p in range(1, 6):
            for m in range(1, 11):
                try:
                    check_schedule(schedule, p, m, 1)
                except PlanError:
                    continue
                cfg = _config(p, m, schedule)
                got = [cfg.inflight(s) for s in range(p)]
                closed = {"1f1b": [min(m, p - s) for s in range(p)], "gpipe": [m] * p,
                          "zb-h1": [min(m, p)] * p}[schedule]
                assert got == closed, (schedule, p, m)
                costs = [StageCost(forward_s=rng.uniform(0.1, 1), backward_input_s=rng.uniform(0.1, 1),
                                   backward_weight_s=rng.uniform(0.1, 1), send_s=rng.uniform(0, 0.3))
                         for _ in range(p)]
                sim = simulate(costs, schedule=schedule, microbatches=m)
                assert list(sim.stage_peak_inflight) == got, (schedule, p, m)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(schedules=ZB))
def test_ilp_equals_brute_force(case: Case) -> None:
    problem = case.problem()
    cfg = problem.config
    check_schedule(cfg.schedule, cfg.num_stages, cfg.microbatches, 1)
    if problem.num_real < cfg.num_stages:
        return
    exact = brute.best(problem)
    dp = min_bottleneck(Chain(problem))
    res = solve_ilp(problem, incumbent=dp, gap=1e-9)
    if exact is None:
        assert res.stage_of is None and res.status == "infeasible"
        return
    assert res.stage_of is not None and res.status == "optimal"
    assert not violations(problem, res.stage_of)
    ev = evaluate(problem, res.stage_of)
    assert ev.fits
    assert math.isclose(ev.objective_s, exact[0], rel_tol=1e-6, abs_tol=1e-9)
    assert res.lower_bound_s <= res.objective_s * (1 + 1e-9)


@pytest.mark.parametrize(("blocks", "seed", "branches", "p", "m"), [
    (60, 2, 1, 4, 8), (80, 5, 2, 4, 8), (40, 1, 1, 3, 6), (60, 3, 1, 2, 4)])
def test_zero_bubble_is_faster_than_1f1b(blocks: int, seed: int, branches: int, p: int, m: int) -> None:
    """With weight gradients to move into the bubble, zb-h1's planned step beats 1F1B's, and
    it is at least as fast as 1F1B's partition run under zb-h1 (the planner's optimum)."""
    prof = synthetic_profile(blocks, seed=seed, branches=branches)
    plans = {s: plan_profile(prof, num_stages=p, microbatches=m, schedule=s, mip_gap=1e-6)
             for s in ("1f1b", "zb-h1")}
    zb, one = plans["zb-h1"], plans["1f1b"]
    assert zb.solver.status == "optimal" and sum(s.backward_weight_s for s in zb.stages) > 0
    assert zb.predicted.iteration_s < one.predicted.iteration_s
    assert zb.solver.objective_s == zb.predicted.iteration_s or math.isclose(
        zb.solver.objective_s, zb.predicted.iteration_s, rel_tol=1e-12)
    problem = from_profile(prof, _config(p, m))
    index = {n: i for i, b in enumerate(problem.blocks) for n in b.nodes}
    theirs = [0] * problem.size
    for node, s in one.stage_of.items():
        theirs[index[node]] = s
    assert zb.solver.objective_s <= evaluate(problem, theirs).objective_s * (1 + 1e-6)


def test_memory_limits_bind_at_zero_bubble_inflight() -> None:
    """zb-h1 holds p micro-batches on every stage (1F1B: p − s), so a limit 1F1B meets can
    need another partition; the plan meets it at zb-h1's counts."""
    prof = synthetic_profile(60, seed=2)
    p, m = 4, 8
    free = plan_profile(prof, num_stages=p, microbatches=m, schedule="zb-h1")
    least = min_memory(Chain(from_profile(prof, _config(p, m))))
    assert least is not None
    need = evaluate(from_profile(prof, _config(p, m)), least[1]).max_memory
    limit = (need + max(s.memory.total for s in free.stages)) // 2
    # without recomputation (which zb-h1 may now plan too: tests/test_partition_recompute.py)
    plan = plan_profile(prof, num_stages=p, microbatches=m, schedule="zb-h1", memory_limit=limit,
                        recompute="none")
    for s in plan.stages:
        per_mb = sum(prof.by_name[n].activation_bytes for n in s.nodes)
        sent = sum(x.bytes for x in s.sends)  # kept until its backward, and what it received
        received = sum(x.bytes for x in plan.stages[s.index - 1].sends) if s.index else 0
        assert s.memory.activations == min(m, p) * (per_mb + sent + received)
        assert s.memory.total <= limit
    assert all(peak <= limit for peak in plan.predicted.peak_memory)
    assert plan.predicted.iteration_s >= free.predicted.iteration_s
    with pytest.raises(InfeasiblePlanError):
        plan_profile(prof, num_stages=p, microbatches=m, schedule="zb-h1", memory_limit=need * 9 // 10,
                     recompute="none")


def test_infeasible_hints_fewer_microbatches_where_they_help() -> None:
    """zb-h1 holds min(m, p): only going below p micro-batches helps (GPipe-like there), while
    1F1B, which torch runs only with m ≥ p, gets no such hint, but the stages that fit. (Seed 2: a model whose
    least memory with 2 micro-batches under zb-h1 is below 1F1B's with 3, now that the
    receive buffers do not grow with the micro-batch count.)"""
    prof = synthetic_profile(30, seed=2)
    p = 3

    def need(m: int, schedule: str = "zb-h1") -> int:
        problem = from_profile(prof, _config(p, m, schedule))
        found = min_memory(Chain(problem))
        assert found is not None
        return evaluate(problem, found[1]).max_memory

    limit = (need(2) + need(3, "1f1b")) // 2
    assert need(2) <= limit < need(3, "1f1b") <= need(3)
    for m in (3, 6):
        hint = explain(from_profile(prof, _config(p, m, memory=limit))).hint or ""
        assert "--microbatches 2" in hint, (m, hint)
    hint = explain(from_profile(prof, _config(p, 6, "1f1b", memory=limit))).hint or ""
    # only remedies checked to fit ([Note: remedies that fit]): no catch-all of smaller ones
    assert "--microbatches 2" not in hint and "--stages 4" in hint and "smaller micro-batches" not in hint


def test_microbatches_must_fill_rounds() -> None:
    check_runnable("zb-h1", 4, 12)
    with pytest.raises(PlanError, match="multiple of its 2 rounds") as info:
        plan_profile(synthetic_profile(30, seed=1), num_stages=4, microbatches=9, schedule="zb-h1")
    assert info.value.hint and "8 or 10" in info.value.hint


def test_cli_plans_zero_bubble(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from autopipe.cli.main import main
    from tests.conftest import ROOT

    out = tmp_path / "plan.json"
    code = main(["plan", str(ROOT / "examples" / "mlp.py") + ":build", "--stages", "2",
                 "--schedule", "zb-h1", "--device-spec", "h100", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    plan = Plan.load(out)
    assert plan.schedule == "zb-h1" and plan.microbatches == 4
    assert [s.rank for s in plan.stages] == [0, 1]
    assert plan.solver.objective_s == pytest.approx(plan.predicted.iteration_s, rel=1e-12)
    assert main(["show", str(out)]) == 0
    assert "zb-h1" in capsys.readouterr().out
