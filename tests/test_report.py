"""Tests for autopipe/report.py: the per-stage table."""

from __future__ import annotations

from autopipe.partition import plan_profile
from autopipe.partition.synthetic import synthetic_profile
from autopipe.report import format_plan


def test_table_has_a_row_per_stage_and_the_headline() -> None:
    plan = plan_profile(synthetic_profile(60, seed=1), num_stages=3, memory_limit="4GiB")
    text = format_plan(plan)
    lines = text.splitlines()
    assert lines[0] == "3 stages, 1f1b, 6 micro-batches"
    assert "solver ilp: optimal" in text and "baselines: dp" in text
    header = next(i for i, line in enumerate(lines) if line.startswith("stage"))
    for s in plan.stages:
        row = lines[header + 1 + 3 * s.index]
        assert row.split()[0] == str(s.index) and s.device in row and "4.00 GiB" in row
        assert lines[header + 2 + 3 * s.index].strip().startswith("modules:")
        assert lines[header + 3 + 3 * s.index].strip().startswith("sends:")
    assert lines[-1].strip() == "sends:   -"
