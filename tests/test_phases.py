"""Tests for autopipe/_phases.py: the planner's phases are timed only inside record()."""

from __future__ import annotations

import autopipe._phases as phases
from autopipe._phases import phase, record
from autopipe.partition import plan_profile
from autopipe.profile import Profile

from .conftest import ROOT


def test_record_times_the_planner_phases() -> None:
    prof = Profile.load(ROOT / "profiles" / "cpu" / "mlp.json")
    with record() as rec:
        plan_profile(prof, num_stages=2, microbatches=4)
    expected = {"plan.problem", "plan.coarsen", "plan.baselines", "plan.solve", "plan.simulate"}
    assert expected <= rec.wall.keys() and rec.wall.keys() == rec.cpu.keys()
    assert all(v >= 0 for v in rec.wall.values())
    # the tie-breaking solves are inside the MIP's phase
    assert rec.wall.get("plan.ties", 0.0) <= rec.wall["plan.solve"]


def test_phases_add_up_and_nothing_is_kept_outside_a_recording() -> None:
    with phase("outside"):
        pass
    with record() as rec:
        for _ in range(3):
            with phase("a"):
                sum(range(10_000))
    assert list(rec.wall) == ["a"] and rec.wall["a"] > 0
    assert phases._RECORDING.get() is None
