"""Tests for autopipe/schedule/text.py: the terminal timeline grid."""

from __future__ import annotations

from autopipe.schedule import StageCost, simulate
from autopipe.schedule.text import text_timeline, timeline_rows

UNIT = StageCost(forward_s=1.0, backward_input_s=1.0, backward_weight_s=0.0)


def test_the_grid_draws_the_1f1b_step_exactly() -> None:
    r = simulate([UNIT] * 2, schedule="1f1b", microbatches=3)
    # (m + p − 1) × 2 = 8 time units: at 2 columns per unit every label fits
    assert timeline_rows(r, 16) == ["F0F1..B0F2B1..B2", "..F0B0F1B1F2B2.."]
    assert timeline_rows(r, 8) == ["FF.BFB.B", ".FBFBFB."]


def test_long_blocks_are_filled_with_their_kind() -> None:
    slow_b = StageCost(forward_s=1.0, backward_input_s=3.0, backward_weight_s=1.0)
    r = simulate([slow_b], schedule="zb-h1", microbatches=1)
    assert timeline_rows(r, 10) == ["F0B0bbbbW0"]


def test_text_timeline_has_a_header_a_row_per_stage_and_idle_shares() -> None:
    r = simulate([UNIT] * 4, schedule="gpipe", microbatches=4)
    lines = text_timeline(r, width=40).splitlines()
    assert lines[0].startswith("gpipe, 4 micro-batches: simulated step 14.000 s, bubble 42.9%")
    rows = [line for line in lines if line.startswith("stage ")]
    assert len(rows) == 4
    assert all(line.endswith("42.9% idle") for line in rows)
    assert all(line.count("|") == 2 and len(line.split("|")[1]) == 40 for line in rows)


def test_virtual_stages_are_labelled_by_rank() -> None:
    r = simulate([UNIT] * 4, schedule="interleaved-1f1b", microbatches=2, virtual_stages=2)
    text = text_timeline(r)
    assert "rank 0 (stages 0, 2) |" in text and "rank 1 (stages 1, 3) |" in text


def test_an_empty_step_is_all_idle() -> None:
    zero = StageCost(forward_s=0.0, backward_input_s=0.0, backward_weight_s=0.0)
    assert timeline_rows(simulate([zero] * 2, microbatches=2), 5) == ["....."] * 2
