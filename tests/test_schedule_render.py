"""Tests for autopipe/schedule/render.py: the PNG of a plan."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import pytest
from PIL import Image

from autopipe.errors import PlanError
from autopipe.plan_format import Baseline
from autopipe.schedule import simulate_plan
from autopipe.schedule.render import render_plan
from tests.test_schedule_simulate import hand_plan


def _opens_as_png(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.load()
        assert img.getextrema() != ((255, 255), (255, 255), (255, 255), (255, 255))  # not blank
        return img.size


@pytest.mark.parametrize("schedule", ["1f1b", "zb-h1"])
def test_a_hand_built_plan_renders_to_a_png(tmp_path: Path, schedule: str) -> None:
    plan = dataclasses.replace(hand_plan(schedule), baselines={
        "uniform": Baseline(iteration_s=80.0, bottleneck_stage=1, max_memory=9000, bottleneck_s=9.0),
        "params": Baseline(iteration_s=None, max_memory=12000)})
    path = tmp_path / "out" / "plan.png"
    render_plan(plan, path)
    width, height = _opens_as_png(path)
    assert width >= 1000 and height >= 500
    assert [p.name for p in path.parent.iterdir()] == ["plan.png"]  # no temp file left
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as a plain write makes it, not 0600


def test_a_given_simulation_is_drawn_as_is(tmp_path: Path) -> None:
    plan = hand_plan()
    render_plan(plan, tmp_path / "a.png", result=simulate_plan(plan))
    _opens_as_png(tmp_path / "a.png")


def test_missing_matplotlib_is_a_plan_error_with_the_install_hint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(PlanError, match="needs matplotlib") as e:
        render_plan(hand_plan(), tmp_path / "x.png")
    assert e.value.hint is not None and "autopipe[plot]" in e.value.hint
    assert not (tmp_path / "x.png").exists()
