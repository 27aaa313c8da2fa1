"""Tests for autopipe/runtime/timeline.py: what ``--timeline`` prints and writes, on hand-made
actions (the recording itself runs in tests/test_runtime_train.py)."""

from __future__ import annotations

import dataclasses

from autopipe import Plan, trace
from autopipe.runtime.timeline import (
    MEASURED_PID,
    STEPS_PID,
    Action,
    ActionLog,
    compare,
    gathered,
    timeline_trace,
)
from autopipe.schedule import StageCost, simulate

from .conftest import example_spec
from .runtime_cases import TINY
from .runtime_plans import plan_from_cuts, valid_cuts


def _plan() -> Plan:
    spec = example_spec("mlp", **TINY["mlp"])
    graph = trace(spec.model, spec.example_inputs)
    return plan_from_cuts(graph, valid_cuts(graph)[:1], microbatches=2)


def _actions(step: int, t0: float, f: float, b: float, post: float) -> dict[int, list[Action]]:
    """Two ranks, 2 micro-batches, GPipe-like order; stage 1 runs its loss after each forward."""
    r0 = [Action(step, "F", 0, 0, t0, t0 + f), Action(step, "post", -1, -1, t0 + f, t0 + f + post),
          Action(step, "F", 0, 1, t0 + 1, t0 + 1 + f), Action(step, "B", 0, 0, t0 + 3, t0 + 3 + b),
          Action(step, "B", 0, 1, t0 + 5, t0 + 5 + b), Action(step, "sync", -1, -1, t0 + 6.75, t0 + 7),
          Action(step, "O", -1, -1, t0 + 7, t0 + 7.5)]
    r1 = [Action(step, "F", 1, 0, t0 + 1, t0 + 1 + f), Action(step, "L", 1, 0, t0 + 1 + f, t0 + 1.25 + f),
          Action(step, "B", 1, 0, t0 + 2, t0 + 2 + b), Action(step, "wait", -1, -1, t0 + 4, t0 + 4.5),
          Action(step, "F", 1, 1, t0 + 5, t0 + 5 + f), Action(step, "L", 1, 1, t0 + 5 + f, t0 + 5.25 + f),
          Action(step, "B", 1, 1, t0 + 6, t0 + 6 + b)]
    return {0: r0, 1: r1}


def _merge(*steps: dict[int, list[Action]]) -> dict[int, list[Action]]:
    return {r: [a for s in steps for a in s[r]] for r in (0, 1)}


def test_compare_takes_medians_after_the_first_step_against_the_simulated_step() -> None:
    plan = _plan()
    sim = simulate([StageCost(forward_s=0.5, backward_input_s=1.0, backward_weight_s=0.0, optimizer_s=0.25)] * 2,
                   schedule="1f1b", microbatches=2)
    # step 1 is far slower and left out; steps 2-4: F 0.5, 0.75, 0.5 → median 0.5
    ranks = _merge(_actions(1, 0, 9.0, 9.0, 9.0), _actions(2, 10, 0.5, 1.0, 0.25),
                   _actions(3, 20, 0.75, 1.5, 0.5), _actions(4, 30, 0.5, 1.0, 0.25))
    lines = compare(plan, ranks, {0: 0, 1: 1}, simulated=sim)
    assert lines[1] == "  stage 0: F 500.00 ms (500.00 ms), B 1000.00 ms (1000.00 ms) per micro-batch"
    # the last stage's loss (0.25) is counted with its forward, as the plan counts it
    assert lines[2] == "  stage 1: F 750.00 ms (500.00 ms), B 1000.00 ms (1000.00 ms) per micro-batch"
    assert lines[3] == "  rank 0: post 250.00 ms, sync + O 750.00 ms (250.00 ms) a step"
    assert lines[4] == "  rank 1: wait 500.00 ms a step"
    assert compare(plan, _actions(1, 0, 1, 1, 1), {0: 0, 1: 1}, simulated=sim) == [
        "timeline: no step after the first to compare"]
    # a plan priced for another device says so (the summary's median step did; these did not)
    assert lines[0] == "timeline, median after the first step, measured (plan's simulated step):"
    h100 = dataclasses.replace(plan, options={**plan.options, "profile_device": "estimate:h100"})
    assert compare(h100, ranks, {0: 0, 1: 1}, simulated=sim, device="cpu")[0] == (
        "timeline, median after the first step, measured (plan's simulated step, for h100, not this cpu):")
    measured = dataclasses.replace(plan, options={**plan.options, "profile_device": "cuda:0"})
    assert compare(measured, ranks, {0: 0, 1: 1}, simulated=sim, device="cuda")[0] == lines[0]


def test_the_trace_holds_the_median_step_from_zero_and_every_step() -> None:
    plan = _plan()
    sim = simulate([StageCost(forward_s=0.5, backward_input_s=1.0, backward_weight_s=0.0)] * 2,
                   schedule="1f1b", microbatches=2)
    ranks = _merge(_actions(1, 0, 9.0, 9.0, 9.0), _actions(2, 20, 0.5, 1.0, 0.25),
                   _actions(3, 30, 0.75, 1.0, 0.25), _actions(4, 40, 0.5, 3.0, 0.25))
    out = timeline_trace(plan, ranks, simulated=sim)
    steps = out["otherData"]["measured"]["step_s"]
    assert steps == {"1": 18.0, "2": 7.5, "3": 7.5, "4": 9.0}  # first start to last end, any rank
    assert out["otherData"]["measured"]["median_step"] == 3
    median = [e for e in out["traceEvents"] if e["ph"] == "X" and e["pid"] == MEASURED_PID]
    assert len(median) == 14 and min(e["ts"] for e in median) == 0.0
    every = [e for e in out["traceEvents"] if e["ph"] == "X" and e["pid"] == STEPS_PID]
    assert len(every) == 4 * 14 and {e["args"]["step"] for e in every} == {1, 2, 3, 4}
    assert max(e["ts"] for e in every) == 47e6  # rank 0's optimizer step in step 4, from step 1's start


def test_gathered_rebuilds_every_rank_actions() -> None:
    log = ActionLog(rank=1, step=2)
    log.record("F", 1, 0, 1.0, 2.0)
    with log.span("O"):
        pass
    sent = []

    def gather(obj: object) -> list[object]:
        sent.append(obj)
        return [(0, []), obj]

    ranks = gathered(log, gather)
    assert ranks[0] == [] and ranks[1][0] == Action(2, "F", 1, 0, 1.0, 2.0)
    assert ranks[1][1].kind == "O" and ranks[1][1].stage == -1 and ranks[1][1].end >= ranks[1][1].start
