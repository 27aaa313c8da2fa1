"""Tests for the planner's search: ``microbatches="auto"`` over divisors of the batch size,
each with its own profile, and ``schedule="auto"``."""

from __future__ import annotations

import dataclasses

import pytest

from autopipe.errors import InfeasiblePlanError, PlanError
from autopipe.partition.planner import plan_profile
from autopipe.partition.problem import SCHEDULES
from autopipe.partition.synthetic import synthetic_profile
from autopipe.profile.profile import Profile

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
    for t in tried[1:]:
        assert t["iteration_s"] == pytest.approx(steps[t["microbatches"]].predicted.iteration_s)


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
    assert any(t["iteration_s"] is None and "fits" in t["why"] for t in plan.options["search"])


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
