"""Tests for autopipe/schedule/plan_costs.py: a plan's stages as simulator costs, with extras."""

from __future__ import annotations

import dataclasses

import pytest

from autopipe.errors import PlanError
from autopipe.plan_format import Plan, Send
from autopipe.schedule import simulate, simulate_plan
from autopipe.schedule.plan_costs import boundary_bytes, link_times, plan_costs
from autopipe.schedule.runtime_costs import ModelCosts, RuntimeCosts
from autopipe.schedule.traffic import Traffic, cut_traffic
from tests.test_schedule_simulate import hand_plan

RUNTIME = RuntimeCosts(forward_overhead_s=0.01, backward_overhead_s=0.02, send_latency_s=0.001,
                       link_bandwidth=1e6, optimizer_tensor_s=0.5, optimizer_element_s=0.001)


def _with_sends() -> Plan:
    plan = hand_plan()
    sends = [(Send(tensor="a", bytes=1000, to_stage=1), Send(tensor="skip", bytes=500, to_stage=3)),
             (Send(tensor="b", bytes=2000, to_stage=2),), (Send(tensor="c", bytes=3000, to_stage=3),), ()]
    stages = tuple(dataclasses.replace(s, sends=x) for s, x in zip(plan.stages, sends))
    return dataclasses.replace(plan, stages=stages)


def test_boundary_bytes_count_a_skip_on_every_boundary_it_crosses() -> None:
    assert boundary_bytes(_with_sends()) == [1500, 2500, 3500]


def test_a_cut_sends_one_message_each_way_and_one_more_forward_for_what_goes_forward_only() -> None:
    """[Note: what a cut sends]: (bytes, forward only, whether it has a gradient)."""
    # hidden states and a small mask: one message each way, the mask's zeros come back
    assert cut_traffic([(100, False, True), (50, False, False)]) == Traffic(150, 1, 150, 1)
    # bfloat16 hidden states and a float32 value of a norm: still one each way
    assert cut_traffic([(100, False, True), (40, False, True)]) == Traffic(140, 1, 140, 1)
    # and a large mask forward only: one more forward, none of its bytes back
    assert cut_traffic([(100, False, True), (1000, True, False)]) == Traffic(1100, 2, 100, 1)
    # nothing with a gradient: one message forward, nothing back, not even the small value's
    # bytes (counted back until 2026-12-06)
    assert cut_traffic([(30, False, False), (1000, True, False)]) == Traffic(1030, 1, 0, 0)
    assert cut_traffic([(0, False, True), (8, False, False)]) == Traffic(8, 1, 0, 0)


def test_link_times_pay_a_latency_per_message() -> None:
    plan = dataclasses.replace(_with_sends(), options={"link_bandwidth": 1e6})
    sends = [(Send(tensor="a", bytes=1000, to_stage=1, no_grad=True),
              Send(tensor="skip", bytes=500, to_stage=3)),
             (Send(tensor="b", bytes=2000, to_stage=2, no_grad=True),),
             (Send(tensor="c", bytes=3000, to_stage=3, forward_only=True, no_grad=True),), ()]
    plan = dataclasses.replace(plan, stages=tuple(dataclasses.replace(s, sends=x)
                                                  for s, x in zip(plan.stages, sends)))
    forward, back = link_times(plan, RUNTIME)
    # cut 0: a without a gradient (its bytes back: small) and the skip with one; cut 1: the
    # skip, b without; cut 2: the skip, and c forward only
    assert forward == pytest.approx([0.001 + 1.5e-3, 0.001 + 2.5e-3, 2 * 0.001 + 3.5e-3])
    assert back == pytest.approx([0.001 + 1.5e-3, 0.001 + 2.5e-3, 0.001 + 0.5e-3])
    again = Plan.from_json(plan.to_json())
    assert again.stages[0].sends == plan.stages[0].sends and again.stages[2].sends == plan.stages[2].sends
    assert "no_grad" not in plan.to_json()["stages"][0]["sends"][1]  # False: not written


def test_without_extras_the_costs_are_the_plans_own() -> None:
    plan = hand_plan()
    costs, virtual = plan_costs(plan)
    assert virtual == 1
    assert [c.forward_s for c in costs] == [s.forward_s for s in plan.stages]
    assert [c.backward_s for c in costs] == pytest.approx([s.backward_s for s in plan.stages])
    assert all(c.optimizer_s == 0 for c in costs)


def test_runtime_costs_add_overheads_latency_bandwidth_and_the_optimizer() -> None:
    plan = _with_sends()
    base, _ = plan_costs(plan)
    costs, _ = plan_costs(plan, runtime=RUNTIME)
    for b, c in zip(base, costs):
        assert c.forward_s == pytest.approx(b.forward_s + 0.01)
        assert c.backward_input_s == pytest.approx(b.backward_input_s + 0.02)
        assert c.backward_weight_s == b.backward_weight_s
    assert [c.send_s for c in costs] == pytest.approx([0.001 + 1.5e-3, 0.001 + 2.5e-3, 0.001 + 3.5e-3, 0.0])
    # 10 bytes of float32 parameters per stage in the hand plan → 2 elements, no tensor count
    assert [c.optimizer_s for c in costs] == pytest.approx([0.001 * 2] * 4)


def test_model_costs_add_the_loss_to_the_last_stage_and_count_real_tensors() -> None:
    plan = hand_plan()
    model = ModelCosts(loss_forward_s=0.3, loss_backward_s=0.4, stage_param_tensors=(1, 2, 3, 4),
                       stage_param_elements=(10, 20, 30, 40), stage_tied_bytes=(1000, 0, 0, 1000))
    base, _ = plan_costs(plan, runtime=RUNTIME)
    costs, _ = plan_costs(plan, runtime=RUNTIME, model=model)
    assert costs[-1].forward_s == pytest.approx(base[-1].forward_s + 0.3)
    assert costs[-1].backward_input_s == pytest.approx(base[-1].backward_input_s + 0.4)
    assert costs[0].forward_s == base[0].forward_s
    tied = 2 * (0.001 + 1000 / 1e6)
    assert [c.optimizer_s for c in costs] == pytest.approx(
        [0.5 + 0.01 + tied, 1.0 + 0.02, 1.5 + 0.03, 2.0 + 0.04 + tied])
    with_extras = simulate_plan(plan, runtime=RUNTIME, model=model)
    assert with_extras.iteration_s > simulate_plan(plan).iteration_s
    assert {e.kind for e in with_extras.events} == {"F", "B", "O"}


def test_a_measured_optimizer_step_replaces_the_runtimes_estimate() -> None:
    plan = hand_plan()
    model = ModelCosts(stage_param_tensors=(1, 2, 3, 4), stage_param_elements=(10, 20, 30, 40),
                       stage_tied_bytes=(1000, 0, 0, 1000), stage_optimizer_s=(0.1, 0.2, 0.3, 0.4))
    costs, _ = plan_costs(plan, runtime=RUNTIME, model=model)
    tied = 2 * (0.001 + 1000 / 1e6)
    assert [c.optimizer_s for c in costs] == pytest.approx([0.1 + tied, 0.2, 0.3, 0.4 + tied])
    alone, _ = plan_costs(plan, model=model)  # no runtime: no all-reduce time, the step still counts
    assert [c.optimizer_s for c in alone] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    with pytest.raises(PlanError, match="model costs are for 3 stages, the plan has 4"):
        plan_costs(plan, model=ModelCosts(stage_optimizer_s=(0.1, 0.2, 0.3)))


def test_a_tied_sum_is_priced_on_the_measured_lines() -> None:
    """The tied gradients' sum: a round trip over the link without a measured line; on the
    all-reduce line where measured; a tied embedding's bytes on the rows line."""
    plan = hand_plan()
    model = ModelCosts(stage_optimizer_s=(0.1, 0.2, 0.3, 0.4), stage_tied_bytes=(1000, 0, 0, 1000),
                       stage_tied_rows_bytes=(600, 0, 0, 600))
    lines = dataclasses.replace(RUNTIME, allreduce_bandwidth=1e5, allreduce_latency_s=0.002,
                                rows_sum_bandwidth=4e5, rows_sum_latency_s=0.003)
    assert RUNTIME.tied_sum_s(1000) == pytest.approx(2 * (0.001 + 1000 / 1e6))
    assert RUNTIME.tied_sum_s(1000, rows=True) == RUNTIME.tied_sum_s(1000)  # no rows line measured
    assert lines.tied_sum_s(0) == 0.0
    costs, _ = plan_costs(plan, runtime=lines, model=model)
    tied = (0.002 + 400 / 1e5) + (0.003 + 600 / 4e5)
    assert [c.optimizer_s for c in costs] == pytest.approx([0.1 + tied, 0.2, 0.3, 0.4 + tied])


def test_the_optimizer_step_runs_after_the_ranks_last_backward() -> None:
    costs, _ = plan_costs(hand_plan(), runtime=RUNTIME)
    r = simulate(costs, schedule="1f1b", microbatches=4)
    for rank in range(4):
        mine = [e for e in r.events if e.rank == rank]
        last_b = max(e.end for e in mine if e.kind == "B")
        (opt,) = [e for e in mine if e.kind == "O"]
        assert opt.start == pytest.approx(last_b)
        assert opt.end - opt.start == pytest.approx(costs[rank].optimizer_s)
    assert r.iteration_s == pytest.approx(max(e.end for e in r.events if e.kind == "O"))


def test_the_per_step_overhead_is_paid_once_per_rank_and_moves_the_whole_step() -> None:
    per_step = dataclasses.replace(RUNTIME, step_overhead_s=0.25)
    plan = hand_plan()
    base, _ = plan_costs(plan, runtime=RUNTIME)
    costs, _ = plan_costs(plan, runtime=per_step)
    assert [c.optimizer_s for c in costs] == pytest.approx([b.optimizer_s + 0.25 for b in base])
    before = simulate(base, schedule="1f1b", microbatches=8).iteration_s
    assert simulate(costs, schedule="1f1b", microbatches=8).iteration_s == pytest.approx(before + 0.25)
    # two stages per rank (interleaved): the rank's first stage carries it, once
    looped = dataclasses.replace(plan, schedule="interleaved-1f1b",
                                 stages=tuple(dataclasses.replace(st, rank=st.index % 2) for st in plan.stages))
    base, _ = plan_costs(looped, runtime=RUNTIME)
    costs, virtual = plan_costs(looped, runtime=per_step)
    assert virtual == 2
    assert [c.optimizer_s - b.optimizer_s for c, b in zip(costs, base)] == pytest.approx([0.25, 0.25, 0, 0])


def test_model_costs_for_another_stage_count_are_a_plan_error() -> None:
    with pytest.raises(PlanError, match="model costs are for 2 stages, the plan has 4"):
        plan_costs(hand_plan(), runtime=RUNTIME,
                   model=ModelCosts(stage_param_tensors=(1, 1), stage_param_elements=(5, 5)))


def test_compute_scale_multiplies_the_profiled_times_only() -> None:
    plan = hand_plan()
    base, _ = plan_costs(plan, runtime=RUNTIME, model=ModelCosts(loss_forward_s=0.3))
    scaled, _ = plan_costs(plan, runtime=RUNTIME, model=ModelCosts(loss_forward_s=0.3, compute_scale=1.5))
    for s, b, c in zip(plan.stages, base, scaled):
        assert c.forward_s - b.forward_s == pytest.approx(0.5 * s.forward_s)
        assert c.backward_weight_s == pytest.approx(1.5 * s.backward_weight_s)
        assert c.send_s == b.send_s and c.optimizer_s == b.optimizer_s


def test_re_timed_stages_replace_the_profiled_times_keeping_the_weight_share() -> None:
    plan = hand_plan()  # backward_weight_s is half of backward_s in every stage
    model = ModelCosts(stage_forward_s=(1.0, 2.0, 3.0, 4.0), stage_backward_s=(2.0, 4.0, 6.0, 8.0),
                       compute_scale=10.0)
    costs, _ = plan_costs(plan, model=model)
    assert [c.forward_s for c in costs] == pytest.approx([1.0, 2.0, 3.0, 4.0])
    assert [c.backward_weight_s for c in costs] == pytest.approx([1.0, 2.0, 3.0, 4.0])
    assert [c.backward_s for c in costs] == pytest.approx([2.0, 4.0, 6.0, 8.0])
