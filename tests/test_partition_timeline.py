"""Tests for autopipe/partition/timeline.py: the longest path equals the simulator's step."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from autopipe.errors import PlanError
from autopipe.partition.problem import SCHEDULES
from autopipe.partition.timeline import (
    longest_path,
    nearby_paths,
    path_length,
    seed_paths,
    splits_backward,
)
from autopipe.schedule.actions import check_schedule
from autopipe.schedule.simulate import StageCost, simulate

costs = st.floats(0.0, 10.0, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 6), st.integers(1, 12), st.sampled_from(SCHEDULES), st.data())
def test_longest_path_is_the_simulated_step(p: int, m: int, schedule: str, data: st.DataObject) -> None:
    try:
        check_schedule(schedule, p, m, 1)
    except PlanError:  # zb-h1's rounds do not divide m
        return
    f = data.draw(st.lists(costs, min_size=p, max_size=p))
    bi = data.draw(st.lists(costs, min_size=p, max_size=p))
    w = data.draw(st.lists(costs, min_size=p, max_size=p))
    c = data.draw(st.lists(costs, min_size=p - 1, max_size=p - 1))
    # the gradients back take their own time, or (None) the same as the values forward
    r = data.draw(st.none() | st.lists(costs, min_size=p - 1, max_size=p - 1))
    sim = simulate([StageCost(forward_s=f[s], backward_input_s=bi[s], backward_weight_s=w[s],
                              send_s=c[s] if s < p - 1 else 0.0,
                              return_s=None if r is None else r[s] if s < p - 1 else 0.0) for s in range(p)],
                   schedule=schedule, microbatches=m)
    b = [x + y for x, y in zip(bi, w)]  # the whole backward; the timeline splits W off itself
    length, count = longest_path(schedule, f, b, w, c, m, returns=r)
    assert math.isclose(length, sim.iteration_s, rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(path_length(schedule, count, f, b, w, c, returns=r), length, rel_tol=1e-12, abs_tol=1e-12)
    assert len(count[3]) == 2 * (p - 1)  # sends forward, then back
    if r is None:  # the same times both ways: as the costs were before they could differ
        assert longest_path(schedule, f, b, w, c, m, returns=c) == (length, count)
    if not splits_backward(schedule):
        assert not any(count[2])
    # every other known path is a lower bound
    for other in seed_paths(schedule, p, m) + nearby_paths(schedule, f, b, w, c, m, returns=r):
        assert path_length(schedule, other, f, b, w, c, returns=r) <= length * (1 + 1e-12) + 1e-12


def test_the_way_forward_and_the_way_back_each_take_their_own_time() -> None:
    """1F1B on 2 stages, 2 micro-batches, every F and B 1 s: the step is 6 s plus the second
    micro-batch's send forward (c) and its gradients' send back (r), each once."""
    f, b, w = [1.0, 1.0], [1.0, 1.0], [0.0, 0.0]
    for c, r in [(0.0, 0.0), (0.0, 0.5), (0.5, 0.0), (0.25, 0.5)]:
        step, count = longest_path("1f1b", f, b, w, [c], 2, returns=[r])
        assert math.isclose(step, 6.0 + c + r)
        assert count[3] == (1, 1) or c == r == 0.0


def test_equal_stages_give_the_classic_formula() -> None:
    length, _ = longest_path("1f1b", [1.0] * 4, [2.0] * 4, [1.0] * 4, [0.0] * 3, 8)
    assert math.isclose(length, 4 * 3 + 7 * 3)


def test_zero_bubble_fills_the_cool_down_with_weight_gradients() -> None:
    """Equal stages, F = B = W (B the input gradients): 1F1B's bubble (p − 1)·(F + B + W)
    shrinks to zb-h1's (p − 1)·(F + B − W), the ZB-H1 figure (Qi et al., 2023)."""
    p, m = 4, 8
    one, _ = longest_path("1f1b", [1.0] * p, [2.0] * p, [1.0] * p, [0.0] * (p - 1), m)
    zb, count = longest_path("zb-h1", [1.0] * p, [2.0] * p, [1.0] * p, [0.0] * (p - 1), m)
    assert math.isclose(one, (m + p - 1) * 3)
    assert math.isclose(zb, m * 3 + (p - 1) * 1)
    assert sum(count[2]) > 0 and splits_backward("zb-h1") and not splits_backward("1f1b")
