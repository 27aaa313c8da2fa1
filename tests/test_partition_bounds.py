"""Tests for autopipe/partition/bounds.py: the bounds a search skips by are never above a
partition's step (brute force on random DAGs, one stage per rank and chunked)."""

from __future__ import annotations

import dataclasses

from hypothesis import HealthCheck, given, settings

from autopipe.partition import brute
from autopipe.partition.bounds import simple_bound, step_bound
from autopipe.partition.costs import evaluate
from autopipe.partition.planner import _build, _Options
from autopipe.partition.problem import Problem
from autopipe.partition.synthetic import synthetic_profile
from autopipe.partition.timeline import seed_paths
from autopipe.partition.windows import path_bound
from tests.partition_cases import Case, cases, chunked_cases


def fastest(problem: Problem) -> float | None:
    """The least step of any valid partition, memory aside (None: no partition)."""
    steps = [evaluate(problem, s).objective_s for s in brute.partitions(problem)]
    return min(steps, default=None)


def check_lower_bound(case: Case) -> None:
    """``step_bound`` is at most the fastest partition's step (where there is one)."""
    problem = case.problem()
    best = fastest(problem)
    if best is not None:
        assert step_bound(problem) <= best * (1 + 1e-9) + 1e-12


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(schedules=("1f1b", "gpipe", "zb-h1"), recompute=("none", "full", "auto"), layered=True))
def test_step_bound_is_a_lower_bound(case: Case) -> None:
    check_lower_bound(case)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunked_cases(schedules=("interleaved-1f1b", "zbv", "dualpipev"), recompute=("none", "full")))
def test_step_bound_is_a_lower_bound_with_chunks(case: Case) -> None:
    check_lower_bound(case)


def test_bounds_see_the_bubble_and_the_ranks() -> None:
    """1F1B's fill and drain: with p = 4 equal stages and m = 8 the step is at least
    (m + p − 1)/m of the even spread, and the path bound says so where the simple one
    does not; with 2 chunks per rank the simple bound counts each rank's speed once."""
    prof = synthetic_profile(64, seed=3)
    options = _Options(method="ilp", time_limit=10.0, mip_gap=1e-3, solver="highs", deterministic=True,
                       optimizer="adam", dtype=None, max_blocks=400, link_bandwidth=float("inf"),
                       memory_limit=None, devices=None)
    one = _build(prof, 4, 8, "1f1b", options).problem
    spread = 8 * sum(b.work_s for b in one.blocks) / 4
    assert simple_bound(one) <= spread * (1 + 1e-9)
    cfg = one.config
    seeds = seed_paths(cfg.schedule, cfg.num_stages, cfg.microbatches)
    # the continuous optimum of max_s (work before s + m·T_s): T_s ∝ (1 − 1/m)^s
    assert path_bound(one, seeds) >= spread * 4 / (8 * (1 - (1 - 1 / 8) ** 4)) * (1 - 1e-6)
    assert path_bound(one, seeds) > 1.15 * simple_bound(one)
    chunked = _build(prof, 4, 8, "interleaved-1f1b", options, 2).problem
    assert simple_bound(chunked) >= spread * (1 - 1e-9)  # 4 ranks, not 8 chunks
    assert step_bound(chunked) >= simple_bound(chunked)
    slow = chunked.with_config(dataclasses.replace(chunked.config, devices=tuple(
        dataclasses.replace(d, speed=0.5) for d in chunked.config.devices)))
    assert simple_bound(slow) >= 2 * spread * (1 - 1e-9)


def test_bounds_count_what_every_partition_pays() -> None:
    """Recomputation under ``full``, the optimizer steps and the runtime's overheads are in
    the bound ([Note: what every partition pays]): on one stage it is the step itself, to
    the last bit of arithmetic; on four it rises by at least the even spread of each."""
    prof = synthetic_profile(40, seed=5)
    options = _Options(method="ilp", time_limit=10.0, mip_gap=1e-3, solver="highs", deterministic=True,
                       optimizer="adam", dtype=None, max_blocks=400, link_bandwidth=float("inf"),
                       memory_limit=None, devices=None)
    for schedule, p in (("1f1b", 1), ("zb-h1", 1), ("1f1b", 4), ("zb-h1", 4)):
        base = _build(prof, p, 8, schedule, options).problem
        cfg = dataclasses.replace(base.config, optimizer_step=(1e-4, 1e-9), forward_overhead_s=2e-4,
                                  backward_overhead_s=3e-4, step_overhead_s=5e-3)
        plain = base.with_config(cfg)
        full = base.with_config(dataclasses.replace(cfg, recompute="full"))
        again = sum(full.blocks[i].forward_s for i in full.recompute_candidates())
        assert again > 0
        if p == 1:
            for problem in (plain, full):
                step = evaluate(problem, [0] * problem.size).objective_s
                assert abs(step_bound(problem) - step) <= 1e-12 * step
            continue
        params = {q for b in base.blocks for q in b.params}
        steps = len(params) * 1e-4 + sum(base.param_bytes[q] for q in params) * 1e-9
        assert simple_bound(plain) >= simple_bound(base) + 8 * 5e-4 + steps / 4 - 1e-12
        assert step_bound(plain) >= step_bound(base) + 5e-3 - 1e-12
        passes = 2 if schedule == "zb-h1" else 1
        assert simple_bound(full) >= simple_bound(plain) + 8 * passes * again / 4 * (1 - 1e-9)
        assert step_bound(full) > step_bound(plain)
