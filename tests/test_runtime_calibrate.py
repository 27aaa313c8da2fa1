"""Tests for autopipe/runtime/calibrate.py: the runtime's fixed costs and a model's extras."""

from __future__ import annotations

import pytest
import torch

import autopipe
from autopipe.plan_format import Device, Plan, Predicted, SolverInfo, Stage, StageMemory
from autopipe.profile import measure
from autopipe.runtime.calibrate import (
    compute_scale,
    measure_loss_s,
    measure_model_costs,
    measure_optimizer_s,
    measure_runtime_costs,
    measure_stage_compute,
)
from autopipe.spec import ModelSpec
from autopipe.trace import Graph
from tests.conftest import example_spec
from tests.models import TiedMLP


def _split_plan(graph: Graph, cut: int) -> Plan:
    """Two stages: graph nodes [0, cut) and [cut, end)."""
    names = [n.name for n in graph.nodes]
    mem = StageMemory(params=0, grads=0, optimizer=0, activations=0, buffers=0, total=0)
    stages = tuple(Stage(index=i, device=f"cpu:{i}", nodes=tuple(part), modules=(), forward_s=1.0,
                         backward_s=2.0, memory=mem)
                   for i, part in enumerate((names[:cut], names[cut:])))
    return Plan(graph_fingerprint=graph.fingerprint, schedule="1f1b", microbatches=2,
                devices=(Device(name="cpu:0", memory=0), Device(name="cpu:1", memory=0)),
                stages=stages, predicted=Predicted(iteration_s=0, bubble_fraction=0),
                solver=SolverInfo(method="uniform", status="heuristic", objective_s=0,
                                  lower_bound_s=0, gap=0, seconds=0))


def test_model_costs_count_each_stages_parameters_and_time_the_loss() -> None:
    spec = example_spec("mlp")
    graph = autopipe.trace(spec.model, spec.example_inputs)
    plan = _split_plan(graph, len(graph.nodes) // 2)
    costs = measure_model_costs(spec, graph, plan)
    params = list(spec.model.parameters())
    assert sum(costs.stage_param_tensors) == len(params)
    assert sum(costs.stage_param_elements) == sum(p.numel() for p in params)
    assert all(t > 0 for t in costs.stage_param_tensors)
    assert costs.stage_tied_bytes == (0, 0)
    assert costs.loss_forward_s > 0 and costs.loss_backward_s > 0
    assert len(costs.stage_forward_s) == len(costs.stage_backward_s) == len(costs.stage_optimizer_s) == 2
    assert all(t > 0 for t in (*costs.stage_forward_s, *costs.stage_backward_s, *costs.stage_optimizer_s))


def test_re_timed_stages_add_up_to_about_the_profiled_model() -> None:
    spec = example_spec("resnet")
    graph = autopipe.trace(spec.model, spec.example_inputs)
    profile = measure(graph, spec.example_inputs, warmup=1, repeats=3, progress=False)
    state = {k: v.clone() for k, v in spec.model.state_dict().items()}
    forward, backward = measure_stage_compute(spec, graph, _split_plan(graph, len(graph.nodes) // 2),
                                              repeats=3)
    assert 0.1 < sum(forward) / profile.forward_s < 10.0  # timings: the order of magnitude
    assert 0.1 < sum(backward) / profile.backward_s < 10.0
    # copies ran: batch-norm statistics and gradients of the model are untouched
    assert all(torch.equal(v, spec.model.state_dict()[k]) for k, v in state.items())
    assert all(p.grad is None for p in spec.model.parameters())


def test_optimizer_steps_run_on_copies_and_actions_can_follow_a_block() -> None:
    spec = example_spec("mlp")
    graph = autopipe.trace(spec.model, spec.example_inputs)
    state = {k: v.clone() for k, v in spec.model.state_dict().items()}
    plan = _split_plan(graph, len(graph.nodes) // 2)
    steps = measure_optimizer_s(spec, graph, plan, "sgd", repeats=2, idle_s=1e-4)
    assert len(steps) == 2 and all(t > 0 for t in steps)
    forward, backward = measure_stage_compute(spec, graph, plan, repeats=2, idle_s=1e-4)
    assert all(t > 0 for t in (*forward, *backward))
    assert all(torch.equal(v, spec.model.state_dict()[k]) for k, v in state.items())
    assert all(p.grad is None for p in spec.model.parameters())


def test_compute_scale_is_the_profiles_whole_model_over_its_nodes() -> None:
    spec = example_spec("mlp")
    graph = autopipe.trace(spec.model, spec.example_inputs)
    profile = measure(graph, spec.example_inputs, warmup=1, repeats=2, progress=False)
    whole = profile.meta["whole_model"]["forward_backward_s"]
    assert compute_scale(profile) == pytest.approx(whole / (profile.forward_s + profile.backward_s))
    assert compute_scale(profile, 2 * (profile.forward_s + profile.backward_s)) == pytest.approx(2.0)
    costs = measure_model_costs(spec, graph, _split_plan(graph, len(graph.nodes) // 2), profile)
    # its own whole-model run: the same model timed again, so the same order of magnitude (the
    # ratio itself is a timing: on a loaded 2-core CI machine it has read 0.47)
    assert 0.1 < costs.compute_scale < 10.0
    profile.meta.pop("whole_model")
    assert compute_scale(profile) == 1.0


def test_a_weight_tied_across_the_cut_is_counted_in_both_stages() -> None:
    model = TiedMLP()
    x = torch.randint(0, 50, (4, 3))
    spec = ModelSpec(model=model, example_inputs=(x,),
                     loss_fn=lambda out, y: torch.nn.functional.cross_entropy(out.flatten(0, 1), y.flatten()),
                     batch=lambda n, step=0: ((x.repeat(n, 1),), x.repeat(n, 1)))
    graph = autopipe.trace(model, (x,))
    head = next(i for i, n in enumerate(graph.nodes) if n.module == "head")
    costs = measure_model_costs(spec, graph, _split_plan(graph, head))
    weight_bytes = model.emb.weight.numel() * 4
    assert costs.stage_tied_bytes == (weight_bytes, weight_bytes)
    # the embedding's side sends its rows ([Note: a tied embedding's rows])
    assert costs.stage_tied_rows_bytes == (weight_bytes, weight_bytes)
    assert costs.stage_param_tensors == (3, 1)  # emb.weight, mid.weight, mid.bias | the tied head


def test_loss_time_covers_a_big_vocabulary_head() -> None:
    small, big = example_spec("gpt2", vocab_size=512), example_spec("gpt2", vocab_size=16384)
    assert sum(measure_loss_s(big)) > sum(measure_loss_s(small))


@pytest.mark.distributed
def test_runtime_costs_are_measured_with_two_gloo_ranks() -> None:
    costs = measure_runtime_costs("adam", timeout_s=120)
    assert costs.device == "cpu" and costs.backend == "gloo" and costs.optimizer == "adam"
    assert 0 < costs.forward_overhead_s < 0.05 and 0 < costs.backward_overhead_s < 0.05
    assert 0 <= costs.step_overhead_s < 0.05
    assert 0 < costs.send_latency_s < 0.1
    assert costs.link_bandwidth > 1e7 and costs.allreduce_bandwidth > 1e7
    assert 0 <= costs.allreduce_latency_s < 0.05
    assert costs.optimizer_tensor_s > 0 and costs.optimizer_element_s > 0


def test_profiles_measured_here_carry_the_runtime_costs() -> None:
    import dataclasses

    from autopipe.partition.planner import plan_profile
    from autopipe.profile import estimate
    from autopipe.runtime.calibrate import PLANNED, profile_runtime

    spec = example_spec("mlp", layers=4)
    graph = autopipe.trace(spec.model, spec.example_inputs)
    measured = profile_runtime(measure(graph, spec.example_inputs, warmup=0, repeats=1, progress=False))
    # the step's fixed overhead and the two sums' latencies are clamped at 0 where their
    # fits read them below (as above, and in ``_line``; CI met a rows-sum latency of 0)
    fitted = ("step_overhead_s", "allreduce_latency_s", "rows_sum_latency_s")
    assert set(measured.runtime) == set(PLANNED) and all(measured.runtime[k] >= 0 for k in fitted)
    assert all(v > 0 for k, v in measured.runtime.items() if k not in fitted), measured.runtime
    estimated = estimate(graph, spec.example_inputs, progress=False)
    assert profile_runtime(estimated) is estimated  # only what was measured on this CPU
    # the planner prices every action, send and step with them
    rt = {"forward_overhead_s": 1e-3, "backward_overhead_s": 2e-3, "send_latency_s": 5e-4,
          "step_overhead_s": 7e-3, "link_bandwidth": 1e9}
    bare = plan_profile(dataclasses.replace(estimated, optimizer={}), num_stages=2, microbatches=4,
                        link_bandwidth=1e9)
    priced = plan_profile(dataclasses.replace(estimated, optimizer={}, runtime=rt), num_stages=2,
                          microbatches=4)
    assert priced.options["runtime"] == rt
    if priced.stage_of == bare.stage_of:
        for a, b in zip(priced.stages, bare.stages):
            assert a.forward_s == pytest.approx(b.forward_s + 1e-3)
            assert a.backward_s == pytest.approx(b.backward_s + 2e-3)
    # 4 micro-batches through 2 stages: at least one F and one B per micro-batch on the path
    assert priced.predicted.iteration_s >= bare.predicted.iteration_s + 7e-3 + 4 * 3e-3


def test_the_plans_optimizer_is_priced_as_the_ranks_step_together(monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    import autopipe.runtime.calibrate as calibrate
    from autopipe.schedule.runtime_costs import RuntimeCosts

    costs = RuntimeCosts(forward_overhead_s=1e-4, send_latency_s=5e-5, link_bandwidth=1e9,
                         allreduce_bandwidth=4e8, optimizer="adam", optimizer_tensor_s=3e-5,
                         optimizer_element_s=7e-9)
    monkeypatch.setattr(calibrate, "measure_runtime_costs", lambda optimizer, **_: costs)
    spec = example_spec("mlp", layers=4)
    graph = autopipe.trace(spec.model, spec.example_inputs)
    alone = measure(graph, spec.example_inputs, warmup=0, repeats=1, progress=False)
    calibrated = calibrate.profile_runtime(alone, "adam")
    # the two calibration ranks' rates for the plan's optimizer; the other optimizers keep the profile's
    assert calibrated.optimizer["adam"] == (3e-5, 7e-9)
    assert {k: v for k, v in calibrated.optimizer.items() if k != "adam"} == \
        {k: v for k, v in alone.optimizer.items() if k != "adam"}
    assert calibrated.runtime["allreduce_bandwidth"] == 4e8
    # a 16-bit profile keeps its own rates (the calibration steps fp32 parameters)
    half = dataclasses.replace(alone, dtype="bfloat16")
    assert calibrate.profile_runtime(half, "adam").optimizer == alone.optimizer


def test_the_all_reduce_is_priced_on_the_line_through_its_two_sizes() -> None:
    from autopipe.runtime.calibrate import _line

    mib = float(1 << 20)
    latency, bandwidth = _line((4 * mib, 5e-3), (16 * mib, 17e-3))  # 1 ms a MiB and 1 ms more
    assert latency == pytest.approx(1e-3) and bandwidth == pytest.approx(mib / 1e-3)
    # noise below the origin (or a larger size no slower): the larger size alone, no latency
    assert _line((4 * mib, 3e-3), (16 * mib, 16e-3)) == (0.0, 16 * mib / 16e-3)
    assert _line((4 * mib, 9e-3), (16 * mib, 8e-3)) == (0.0, 16 * mib / 8e-3)
