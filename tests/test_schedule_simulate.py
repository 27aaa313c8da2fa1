"""Tests for autopipe/schedule/simulate.py: step time, bubbles, memory and event validity."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autopipe.errors import PlanError
from autopipe.plan_format import Device, Plan, Predicted, SolverInfo, Stage, StageMemory
from autopipe.schedule import SCHEDULES, SimResult, StageCost, simulate, simulate_plan
from autopipe.schedule.plan_costs import boundary_send_s

UNIT = StageCost(forward_s=1.0, backward_input_s=0.5, backward_weight_s=0.5)
"""F = B = 1 (B split evenly into input and weight gradients)."""


def _idle(r: SimResult) -> list[float]:
    return [r.iteration_s - b for b in r.busy_s]


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
@pytest.mark.parametrize(("p", "m"), [(1, 1), (2, 2), (4, 8), (4, 2), (8, 32), (3, 7)])
def test_equal_stages_give_the_textbook_step_and_bubble(schedule: str, p: int, m: int) -> None:
    r = simulate([UNIT] * p, schedule=schedule, microbatches=m)
    assert r.iteration_s == (m + p - 1) * 2
    assert r.bubble_fraction == pytest.approx((p - 1) / (m + p - 1), abs=1e-12)
    assert r.stage_bubble == pytest.approx([(p - 1) / (m + p - 1)] * p, abs=1e-12)


@pytest.mark.parametrize(("p", "m"), [(4, 8), (4, 2), (8, 32), (5, 3), (3, 3), (6, 1)])
def test_1f1b_holds_min_m_p_minus_s_microbatches(p: int, m: int) -> None:
    r = simulate([UNIT] * p, schedule="1f1b", microbatches=m)
    assert r.peak_inflight == tuple(min(m, p - s) for s in range(p))


def test_gpipe_holds_every_microbatch() -> None:
    r = simulate([UNIT] * 4, schedule="gpipe", microbatches=6)
    assert r.peak_inflight == (6, 6, 6, 6)


def test_peak_activation_bytes_are_inflight_times_per_microbatch_bytes() -> None:
    costs = [StageCost(forward_s=1, backward_input_s=1, backward_weight_s=0, activation_bytes=100 * (s + 1))
             for s in range(4)]
    r = simulate(costs, schedule="1f1b", microbatches=8)
    assert r.peak_activation_bytes == tuple(100 * (s + 1) * (4 - s) for s in range(4))


@pytest.mark.parametrize(("p", "m"), [(4, 8), (4, 16), (8, 32), (2, 4)])
def test_zb_h1_bubble_is_a_third_of_1f1b(p: int, m: int) -> None:
    cost = StageCost(forward_s=1, backward_input_s=1, backward_weight_s=1)  # F = B = W
    one = simulate([cost] * p, schedule="1f1b", microbatches=m)
    zb = simulate([cost] * p, schedule="zb-h1", microbatches=m)
    # idle time per stage: 1F1B (p-1)(F+B+W) = 3(p-1); ZB-H1 (p-1)(F+B-W) = p-1
    assert _idle(one) == pytest.approx([3 * (p - 1)] * p)
    assert _idle(zb) == pytest.approx([p - 1] * p)
    assert 0.3 < zb.bubble_fraction / one.bubble_fraction < 0.45
    assert zb.iteration_s < one.iteration_s


def test_interleaving_shrinks_the_bubble() -> None:
    p, m, v = 4, 8, 2
    whole = StageCost(forward_s=1, backward_input_s=2, backward_weight_s=0)
    half = StageCost(forward_s=0.5, backward_input_s=1, backward_weight_s=0)
    one = simulate([whole] * p, schedule="1f1b", microbatches=m)
    inter = simulate([half] * (p * v), schedule="interleaved-1f1b", microbatches=m, virtual_stages=v)
    assert inter.iteration_s < one.iteration_s
    assert inter.bubble_fraction < one.bubble_fraction
    assert sum(inter.busy_s) == pytest.approx(sum(one.busy_s))
    assert {e.rank for e in inter.events if e.stage in (1, 5)} == {1}


def test_the_slowest_stage_sets_the_steady_state() -> None:
    fast = StageCost(forward_s=1, backward_input_s=2, backward_weight_s=0)
    slow = StageCost(forward_s=2, backward_input_s=4, backward_weight_s=0)
    m = 40
    r = simulate([fast, slow, fast, fast], schedule="1f1b", microbatches=m)
    # the slow stage is busy m × 6, after stage 0's first F and before its last B;
    # the planner's closed form Σ T + (m − 1) max T is an upper bound
    assert m * 6 + 1 + 2 <= r.iteration_s <= (3 + 6 + 3 + 3) + (m - 1) * 6
    assert r.stage_bubble[1] < min(r.stage_bubble[s] for s in (0, 2, 3))


def test_sends_delay_the_step() -> None:
    base = simulate([UNIT] * 4, schedule="1f1b", microbatches=8)
    slow = StageCost(forward_s=1, backward_input_s=0.5, backward_weight_s=0.5, send_s=0.25)
    r = simulate([slow] * 4, schedule="1f1b", microbatches=8)
    assert r.iteration_s > base.iteration_s
    # the first micro-batch crosses 3 boundaries forward and 3 back on the critical path
    assert r.iteration_s >= base.iteration_s + 6 * 0.25
    assert len(r.transfers) == 2 * 3 * 8


def _check_valid(r: SimResult, p: int) -> None:
    end = {(e.stage, e.kind, e.microbatch): e.end for e in r.events}
    start = {(e.stage, e.kind, e.microbatch): e.start for e in r.events}
    eps = 1e-9
    for (s, kind, k), t in start.items():
        assert t >= 0
        if kind == "B":
            assert t >= end[s, "F", k] - eps
        if kind == "W":
            assert t >= end[s, "B", k] - eps
    for x in r.transfers:
        producer = (x.src_stage, x.kind, x.microbatch)
        consumer = (x.dst_stage, x.kind, x.microbatch)
        assert x.start >= end[producer] - eps, "a send starts before its data exists"
        assert start[consumer] >= x.end - eps, "a receiver starts before the send ends"
        assert abs(x.src_stage - x.dst_stage) == 1
    for rank in range(r.num_ranks):
        mine = sorted((e for e in r.events if e.rank == rank), key=lambda e: e.start)
        for a, b in itertools.pairwise(mine):
            assert b.start >= a.end - eps, "a rank runs two actions at once"
    assert max(e.end for e in r.events) == r.iteration_s


costs = st.builds(
    StageCost,
    forward_s=st.floats(0.0, 5.0), backward_input_s=st.floats(0.0, 5.0),
    backward_weight_s=st.floats(0.0, 5.0), send_s=st.floats(0.0, 2.0),
    activation_bytes=st.integers(0, 1000), optimizer_s=st.sampled_from([0.0, 0.5]))


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(SCHEDULES), st.integers(1, 5), st.integers(1, 10), st.data())
def test_simulated_orders_are_valid_schedules(schedule: str, p: int, m: int, data: st.DataObject) -> None:
    v = data.draw(st.sampled_from([1, 2])) if schedule in ("interleaved-1f1b", "zb-h1") else 1
    v = 2 if schedule in ("zbv", "dualpipev") else v  # two stages per rank, in a V
    stages = data.draw(st.lists(costs, min_size=p * v, max_size=p * v))
    try:
        r = simulate(stages, schedule=schedule, microbatches=m, virtual_stages=v)
    except PlanError as e:
        assert "rounds" in e.message or "DualPipeV needs at least as many micro-batches" in e.message
        return
    _check_valid(r, p)
    kinds = 3 if schedule in ("zb-h1", "zbv", "dualpipev") else 2
    assert len(r.events) == kinds * m * p * v + sum(c.optimizer_s > 0 for c in stages)
    assert 0.0 <= r.bubble_fraction <= 1.0
    # no schedule beats the busiest rank's compute
    assert r.iteration_s >= max(r.busy_s) - 1e-9


def test_dualpipev_sends_an_overlapped_forward_when_its_backward_ends() -> None:
    """torch runs an OVERLAP_F_B as its forward then its full backward and posts both sends
    after the backward ([Note: DualPipeV]): rank 0's pair (0F3 3B1) sends F3's activations
    to stage 1 only when 3B1 (written B then W) is done, and the gradient of 3B1 with them."""
    stages = [StageCost(forward_s=1.0, backward_input_s=2.0, backward_weight_s=1.0, send_s=0.25)] * 4
    r = simulate(stages, schedule="dualpipev", microbatches=4, virtual_stages=2)
    end = {(e.stage, e.kind, e.microbatch): e.end for e in r.events}
    sent = {(x.src_stage, x.kind, x.microbatch): x.start for x in r.transfers}
    assert end[0, "F", 3] < end[3, "B", 1] < end[3, "W", 1]
    assert sent[0, "F", 3] == sent[3, "B", 1] == end[3, "W", 1]
    assert sent[0, "F", 0] == end[0, "F", 0]  # a forward alone sends at once
    _check_valid(r, 2)


def test_unknown_schedule_is_a_plan_error_naming_the_known_ones() -> None:
    with pytest.raises(PlanError, match="unknown schedule 'dualpipe'") as e:
        simulate([UNIT], schedule="dualpipe", microbatches=2)
    assert e.value.hint is not None and all(s in e.value.hint for s in SCHEDULES)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"forward_s": -1.0}, "forward_s is -1.0"),
    ({"send_s": float("nan")}, "send_s is nan"),
    ({"activation_bytes": -5}, "activation_bytes is -5"),
])
def test_bad_costs_are_plan_errors(kwargs: dict[str, float], match: str) -> None:
    base: dict[str, float] = {"forward_s": 1.0, "backward_input_s": 1.0, "backward_weight_s": 0.0}
    with pytest.raises(PlanError, match=match):
        StageCost(**{**base, **kwargs})  # type: ignore[arg-type]


def test_no_stages_or_uneven_virtual_stages_are_plan_errors() -> None:
    with pytest.raises(PlanError, match="no stages"):
        simulate([], microbatches=2)
    with pytest.raises(PlanError, match="3 stages cannot be spread as 2 virtual stages"):
        simulate([UNIT] * 3, schedule="interleaved-1f1b", microbatches=2, virtual_stages=2)


def _stage(i: int, *, fwd: float, bwd: float, w: float = 0.0, comm: float = 0.0,
           act: int = 0) -> Stage:
    mem = StageMemory(params=10, grads=10, optimizer=20, activations=act, buffers=0, total=40 + act)
    return Stage(index=i, device=f"cpu:{i}", nodes=(f"n{i}",), modules=(), forward_s=fwd,
                 backward_s=bwd, backward_weight_s=w, comm_s=comm, memory=mem)


def hand_plan(schedule: str = "1f1b", m: int = 8) -> Plan:
    """A 4-stage plan built by hand; stage 2 is the bottleneck."""
    times = [(1.0, 2.0), (1.0, 2.0), (2.0, 4.0), (1.0, 2.0)]
    stages = tuple(_stage(i, fwd=f, bwd=b, w=b / 2, comm=0.1 if i in (0, 3) else 0.2,
                          act=1000 * (4 - i))
                   for i, (f, b) in enumerate(times))
    return Plan(graph_fingerprint="x", schedule=schedule, microbatches=m,
                devices=tuple(Device(name=f"cpu:{i}", memory=10_000) for i in range(4)),
                stages=stages, predicted=Predicted(iteration_s=0.0, bubble_fraction=0.0),
                solver=SolverInfo(method="ilp", status="optimal", objective_s=0.0,
                                  lower_bound_s=0.0, gap=0.0, seconds=0.0))


def test_simulate_plan_uses_the_plans_stage_times_and_schedule() -> None:
    plan = hand_plan()
    r = simulate_plan(plan)
    # every boundary carries 0.05 s each way: comm_s = 2 × (in + out) = 0.1 at the ends, 0.2 inside
    direct = simulate([StageCost(forward_s=s.forward_s, backward_input_s=s.backward_s - s.backward_weight_s,
                                 backward_weight_s=s.backward_weight_s, send_s=0.05)
                       for s in plan.stages], schedule="1f1b", microbatches=8)
    assert r.iteration_s == pytest.approx(direct.iteration_s)
    # 1F1B holds 4 - s micro-batches; the plan's activations are 1000 × (4 - s) in total
    assert r.peak_activation_bytes == (4000, 3000, 2000, 1000)
    zb = simulate_plan(hand_plan("zb-h1"))
    assert zb.iteration_s < r.iteration_s


def test_boundary_send_times_unroll_the_stages_comm_s() -> None:
    plan = hand_plan()
    assert boundary_send_s(plan) == pytest.approx([0.05, 0.05, 0.05])
    uneven = [0.2, 0.2 + 0.6, 0.6 + 0.0, 0.0]  # boundaries carry 0.1, 0.3 and 0 s each way
    stages = tuple(dataclasses.replace(s, comm_s=c) for s, c in zip(plan.stages, uneven))
    assert boundary_send_s(dataclasses.replace(plan, stages=stages)) == pytest.approx([0.1, 0.3, 0.0])


def test_simulate_plan_rejects_a_weight_time_above_backward_time() -> None:
    plan = hand_plan()
    bad = Plan(**{**{f: getattr(plan, f) for f in plan.__dataclass_fields__},
                  "stages": (_stage(0, fwd=1, bwd=1, w=2),)})
    with pytest.raises(PlanError, match="backward_weight_s 2 exceeds backward_s 1"):
        simulate_plan(bad)
