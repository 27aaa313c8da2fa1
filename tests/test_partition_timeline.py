"""Tests for autopipe/partition/timeline.py: the longest path equals the simulator's step."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from autopipe.partition.timeline import longest_path, nearby_paths, path_length, seed_paths
from autopipe.schedule.simulate import StageCost, simulate

costs = st.floats(0.0, 10.0, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 6), st.integers(1, 12), st.sampled_from(["1f1b", "gpipe"]), st.data())
def test_longest_path_is_the_simulated_step(p: int, m: int, schedule: str, data: st.DataObject) -> None:
    f = data.draw(st.lists(costs, min_size=p, max_size=p))
    b = data.draw(st.lists(costs, min_size=p, max_size=p))
    c = data.draw(st.lists(costs, min_size=p - 1, max_size=p - 1))
    sim = simulate([StageCost(forward_s=f[s], backward_input_s=b[s], backward_weight_s=0.0,
                              send_s=c[s] if s < p - 1 else 0.0) for s in range(p)],
                   schedule=schedule, microbatches=m)
    length, count = longest_path(schedule, f, b, c, m)
    assert math.isclose(length, sim.iteration_s, rel_tol=1e-12, abs_tol=1e-12)
    assert math.isclose(path_length(count, f, b, c), length, rel_tol=1e-12, abs_tol=1e-12)
    # every other known path is a lower bound
    for other in seed_paths(schedule, p, m) + nearby_paths(schedule, f, b, c, m):
        assert path_length(other, f, b, c) <= length * (1 + 1e-12) + 1e-12


def test_equal_stages_give_the_classic_formula() -> None:
    length, _ = longest_path("1f1b", [1.0] * 4, [2.0] * 4, [0.0] * 3, 8)
    assert math.isclose(length, 4 * 3 + 7 * 3)
