"""Tests for autopipe/partition/degrees.py: the search over pipeline × data-parallel degrees, and
the data-parallel all-reduce the planner adds (``plan_profile(grad_sync=...)``)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import pytest

from autopipe.errors import AutopipeError, InfeasiblePlanError, PlanError
from autopipe.partition.degrees import plan_degrees
from autopipe.partition.planner import plan_profile
from autopipe.partition.replicas import PLACEMENTS, Cluster, GradSync, place
from autopipe.partition.synthetic import synthetic_profile
from autopipe.partition.timeline import longest_path
from autopipe.plan_format import Plan
from autopipe.profile.profile import Profile
from autopipe.runtime.validate import validate_plan
from autopipe.schedule.actions import check_runnable
from tests.mip_clock import Clock, to_the_limit
from tests.test_partition_search import at_size

RATES = {"adam": (1e-4, 2e-12)}
"""Seconds per tensor and per element of the optimizer step (BASE has none)."""
INTRA, INTER = 50e9, 5e9


def sized(size: int) -> Profile:
    """The search tests' synthetic profile at micro-batches of ``size``, with optimizer rates."""
    return dataclasses.replace(at_size(size), optimizer=RATES)


def test_all_reduce_joins_each_stage_optimizer_step() -> None:
    kw = dict(num_stages=2, microbatches=4, schedule="1f1b", method="uniform", link_bandwidth=math.inf)
    plain = plan_profile(sized(2), **kw)  # type: ignore[arg-type]
    synced = plan_profile(sized(2), grad_sync=GradSync(replicas=4, bandwidth=INTER), **kw)  # type: ignore[arg-type]
    for a, b in zip(plain.stages, synced.stages):
        assert a.nodes == b.nodes and a.memory == b.memory
        # a ring over 4 replicas: 2·3/4 of the stage's gradient bytes (= its parameter bytes)
        assert b.optimizer_s - a.optimizer_s == pytest.approx(1.5 * b.memory.params / INTER, rel=1e-12)
    # it sits where the optimizer step sits: after the stage's last backward
    f, bw, w, opt = ([getattr(s, k) for s in synced.stages]
                     for k in ("forward_s", "backward_s", "backward_weight_s", "optimizer_s"))
    step, _ = longest_path("1f1b", f, bw, w, [0.0], 4, opt)
    assert synced.predicted.iteration_s == pytest.approx(step, rel=1e-12)
    assert synced.options["grad_sync"]["seconds_per_byte"] == 1.5 / INTER


def test_one_stage_pays_its_all_reduce_after_all_its_work() -> None:
    plan = plan_profile(sized(2), num_stages=1, microbatches=4, method="uniform",
                        grad_sync=GradSync(replicas=2, bandwidth=INTER))
    s = plan.stages[0]
    params = s.memory.params
    tensors = len(sized(2).params)
    assert s.optimizer_s == pytest.approx(tensors * 1e-4 + params / 4 * 2e-12 + params / INTER, rel=1e-12)
    assert plan.predicted.iteration_s == pytest.approx(4 * (s.forward_s + s.backward_s) + s.optimizer_s,
                                                       rel=1e-12)


def test_sharded_optimizer_states_and_step() -> None:
    kw = dict(num_stages=2, microbatches=2, method="uniform")
    ddp = plan_profile(sized(1), grad_sync=GradSync(replicas=2, bandwidth=INTER), **kw)  # type: ignore[arg-type]
    zero = plan_profile(sized(1), grad_sync=GradSync(replicas=2, bandwidth=INTER, shard_optimizer=True),
                        **kw)  # type: ignore[arg-type]
    for a, b in zip(ddp.stages, zero.stages):
        # fp32 Adam keeps 8 bytes per 4-byte parameter: half of it on each of 2 replicas
        assert a.memory.optimizer == 2 * a.memory.params and b.memory.optimizer == b.memory.params
        # and a replica's step widens only its own pieces' states: half the temporaries
        assert a.memory.optimizer_step > 0
        assert b.memory.optimizer_step == pytest.approx(a.memory.optimizer_step / 2, abs=len(sized(1).params))
        # half the step; the sync moves one all-reduce's bytes either way (a reduce-scatter
        # and an all-gather sharded: [Note: the sharded sync's price])
        assert a.optimizer_s - b.optimizer_s == pytest.approx(a.memory.params / 4 * 2e-12 / 2, rel=1e-9)


def _brute_force(batch: int, gpus: int, per_node: int, memory: int | None) -> list[float]:
    """Every candidate's step, each planned alone with plan_profile."""
    cl = Cluster(gpus=gpus, gpus_per_node=per_node, intra_bandwidth=INTRA, inter_bandwidth=INTER)
    steps = []
    for p in (d for d in range(1, gpus + 1) if gpus % d == 0):
        dp = gpus // p
        if batch % dp:
            continue
        for name in PLACEMENTS:
            pl = place(cl, p, name)
            for b in (d for d in range(1, batch // dp + 1) if batch // dp % d == 0):
                m = batch // dp // b
                for schedule in ("1f1b", "zb-h1") if p > 1 else ("1f1b",):
                    try:
                        check_runnable(schedule, p, m)
                        plan = plan_profile(sized, num_stages=p, microbatches=m, batch_size=m * b,
                                            schedule=schedule, method="dp", memory_limit=memory,
                                            link_bandwidth=pl.cut_bandwidth,
                                            grad_sync=GradSync(replicas=dp, bandwidth=pl.group_bandwidth))
                    except AutopipeError:
                        continue
                    steps.append(plan.predicted.iteration_s)
    return steps


@pytest.mark.parametrize("memory", [None, 450 << 20])
def test_search_picks_the_fastest_candidate(memory: int | None) -> None:
    kw = dict(gpus=4, gpus_per_node=2, batch_size=8, intra_node_bandwidth=INTRA, inter_node_bandwidth=INTER,
              schedule=("1f1b", "zb-h1"), memory_limit=memory)
    plan = plan_degrees(sized, screen=None, method="dp", **kw)  # type: ignore[arg-type]
    steps = _brute_force(8, 4, 2, memory)
    rows = plan.options["degrees"]
    assert plan.predicted.iteration_s == min(steps)
    assert {r["iteration_s"] for r in rows if "iteration_s" in r} == set(steps)
    assert all(r["memory"] <= memory for r in rows if memory and "memory" in r)
    if memory:
        assert any("fits" in r.get("why", "") for r in rows)
    dp = plan.data_parallel
    assert dp is not None and dp.degree * plan.num_stages == 4 and dp.batch_size == 8
    assert plan.options["batch_size"] == 8 // dp.degree
    assert plan.options["microbatch_size"] * plan.microbatches == 8 // dp.degree
    chosen = [r for r in rows if r.get("iteration_s") == plan.predicted.iteration_s]
    assert chosen and all(r["samples_per_s"] == pytest.approx(8 / plan.predicted.iteration_s) for r in chosen)


def test_finalists_are_replanned_by_the_ilp() -> None:
    plan = plan_degrees(sized, gpus=4, batch_size=8, stages=2, microbatch_sizes=[1, 2], finalists=2)
    rows = plan.options["degrees"]
    again = [r for r in rows if r.get("method") == "ilp"]
    assert len(again) == 2 and plan.solver.method == "ilp"
    assert all(r["iteration_s"] <= r["dp_s"] for r in again)
    assert plan.predicted.iteration_s == min(r["iteration_s"] for r in rows if "iteration_s" in r)
    assert len(rows) == 2 * 3  # sizes 1 and 2 × three schedules; one node: one placement


def test_finalists_share_the_time_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """[Note: a candidate's time]: with each finalist's MIPs running to their limit, the
    three share the time limit (until 2026-12-06 each had all of it); the plan records the
    limit the user gave."""
    import autopipe.partition.degrees as degrees
    import autopipe.partition.mip_time as mip_time

    clock, limits = Clock(), []
    monkeypatch.setattr(degrees, "plan_profile",
                        to_the_limit(clock, limits, plan_profile, lambda kw: kw["method"] == "ilp"))
    monkeypatch.setattr(mip_time, "time", clock)
    chosen = plan_degrees(sized, gpus=4, batch_size=8, stages=2, microbatch_sizes=[1, 2], time_limit=30)
    assert limits == [10.0, 10.0, 10.0] and clock.now == 30.0
    assert chosen.solver.method == "ilp" and chosen.options["time_limit"] == 30


def test_a_refined_search_keeps_time_for_the_re_solves(monkeypatch: pytest.MonkeyPatch) -> None:
    """[Note: time kept for the re-solves]: with the finalists' MIPs running to their limit,
    a search to be refined leaves a quarter of the limit to the re-solves of its refined
    finalists and of the winner timed again, in equal parts, each round at most half of its
    part (until 2026-12-07 they got what the finalists left: nothing)."""
    import autopipe.partition.degrees as degrees
    import autopipe.partition.mip_time as mip_time

    clock, limits = Clock(), []
    monkeypatch.setattr(degrees, "plan_profile",
                        to_the_limit(clock, limits, plan_profile, lambda kw: kw["method"] == "ilp"))
    monkeypatch.setattr(mip_time, "time", clock)

    def refine(plan: Plan, size: int, replan: Callable[[Profile], Plan]) -> Plan:
        return replan(sized(size))  # one re-solve per finalist, as a round of refine's

    chosen = plan_degrees(sized, gpus=4, batch_size=8, stages=2, microbatch_sizes=[1, 2], time_limit=40,
                          refine=refine)
    refined = [r for r in chosen.options["degrees"] if "refined_s" in r]
    # three finalists in 30 s; their re-solves, and the winner's again, in the 10 s kept
    assert len(refined) == 3 and any("retimed_s" in r for r in refined)
    # each finalist's rounds at most half of its equal part of what is left: 10 s among 4
    left, kept = 10.0, []
    for parts in (8, 6, 4, 2):
        kept.append(left / parts)
        left -= kept[-1]
    assert limits == pytest.approx([10.0, 10.0, 10.0, *kept]) and chosen.options["time_limit"] == 40


def test_a_screen_by_the_ilp_shares_the_time_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """With every candidate planned by the ILP and each MIP running to its limit, each gets an
    equal part of the time limit (until 2026-12-06 the first had all of it, the rest none);
    one that is never solved leaves its part to those after it."""
    import autopipe.partition.degrees as degrees
    import autopipe.partition.mip_time as mip_time

    clock, limits = Clock(), []
    monkeypatch.setattr(degrees, "plan_profile", to_the_limit(clock, limits, plan_profile, lambda kw: True))
    monkeypatch.setattr(mip_time, "time", clock)
    chosen = plan_degrees(sized, gpus=4, batch_size=8, stages=2, microbatch_sizes=[1, 2],
                          schedule=["1f1b", "gpipe"], screen=None, time_limit=40)
    tried = [r for r in chosen.options["degrees"] if "iteration_s" in r]
    assert len(tried) == 4 and limits == [10.0] * 4 and clock.now == 40.0
    assert chosen.solver.method == "ilp" and chosen.options["time_limit"] == 40
    limits.clear()
    clock.now = 0.0  # 1F1B cannot run 2 micro-batches (of 2) on 4 stages: its part goes to the last
    plan_degrees(sized, gpus=4, batch_size=4, stages=4, microbatch_sizes=[2, 1],
                 schedule=["1f1b", "gpipe"], screen=None, time_limit=30)
    assert limits == [7.5, 7.5, 15.0]


def test_batch_and_gpu_counts_that_do_not_divide() -> None:
    with pytest.raises(PlanError, match="6 GPUs do not fill nodes of 4"):
        plan_degrees(sized, gpus=6, gpus_per_node=4, batch_size=12)
    with pytest.raises(PlanError, match="plan_degrees does not take 'link_bandwidth'"):
        plan_degrees(sized, gpus=4, batch_size=8, link_bandwidth=1e9)
    with pytest.raises(PlanError, match="3 stages do not divide 4 GPUs") as e:
        plan_degrees(sized, gpus=4, batch_size=8, stages=3)
    assert e.value.hint == "use one of 1, 2, 4"
    with pytest.raises(PlanError, match=r"none of the 1 pipeline degrees tried: 2 x 2: the batch of 3 "
                                        r"does not split over 2 replicas"):
        plan_degrees(sized, gpus=4, batch_size=3, stages=2)
    with pytest.raises(PlanError, match="4 x 1: 3 micro-batches do not divide a replica's 8 samples"):
        plan_degrees(sized, gpus=4, batch_size=8, microbatches=3)
    plan = plan_degrees(sized, gpus=4, batch_size=6, microbatches=3, method="dp")
    why = {(r["stages"], r.get("microbatch_size")): r.get("why") for r in plan.options["degrees"]}
    assert why == {(1, None): "the batch of 6 does not split over 4 replicas",
                   (2, 1): None, (4, 2): None}  # 3 micro-batches of 1 on 2 replicas; of 2 on one
    assert plan.microbatches == 3


def test_nothing_fits_says_why_for_each_degree() -> None:
    with pytest.raises(InfeasiblePlanError) as e:
        plan_degrees(sized, gpus=4, batch_size=8, memory_limit="8MiB", method="dp")
    text = str(e.value)
    assert "no way to train on 4 GPUs fits" in text
    assert "1 stages x 4 replicas (parameters, gradients and optimizer states take" in text
    assert "4 stages x 1 replicas (" in text and "--shard-optimizer" in text


def test_more_stages_than_blocks_are_skipped() -> None:
    small = synthetic_profile(3, seed=1)
    plan = plan_degrees(small, gpus=8, batch_size=8, method="dp", stages=None)
    why = {r["stages"]: r.get("why", "") for r in plan.options["degrees"]}
    assert why[4] == why[8] == "the model has only 3 blocks that can be separated"
    assert plan.num_stages <= 2


def test_plan_with_replicas_round_trips_and_validates(tmp_path: Path) -> None:
    plan = plan_degrees(sized, gpus=4, gpus_per_node=2, batch_size=8, method="dp", stages=2)
    assert plan.replicas == 2 and plan.data_parallel is not None
    validate_plan(plan)
    path = tmp_path / "plan.json"
    plan.save(path)
    again = Plan.load(path)
    assert again == plan and again.data_parallel == plan.data_parallel
    assert again.data_parallel.world_size == 4  # type: ignore[union-attr]
    data = plan.to_json()
    data.pop("data_parallel")
    assert Plan.from_json(data).replicas == 1  # a plan without it is one pipeline
    bad = plan.to_json()
    bad["data_parallel"]["ranks"] = [[0, 1], [1, 3]]
    with pytest.raises(PlanError, match="ranks are not each of the 4 ranks once"):
        Plan.from_json(bad, "x.json")
    bad["data_parallel"] = {"degree": 2}
    with pytest.raises(PlanError, match="x.json: malformed plan"):
        Plan.from_json(bad, "x.json")
