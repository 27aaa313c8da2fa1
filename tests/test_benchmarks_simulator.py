"""benchmarks/bench_simulator.py's timing of simulate(): every schedule the simulator knows."""

from __future__ import annotations

import pytest

from autopipe.schedule import SCHEDULES
from benchmarks import bench_simulator


def test_bench_speed_times_every_schedule(capsys: pytest.CaptureFixture[str]) -> None:
    # the V-shaped schedules hold two stages a rank: a call with one used to raise PlanError
    bench_simulator.bench_speed(repeats=1)
    out = capsys.readouterr().out
    assert all(f"  {schedule:17s} " in out for schedule in SCHEDULES)
