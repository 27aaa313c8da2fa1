"""Tests for autopipe/schedule/show.py: the schedule part of `autopipe show`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from PIL import Image

from autopipe.errors import AutopipeError
from autopipe.schedule.show import add_show_args, check_show_args, show_schedule
from tests.test_schedule_simulate import hand_plan


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_show_args(p)
    return p.parse_args(list(argv))


def test_prints_the_timeline_and_writes_png_and_trace(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    png, trace = tmp_path / "p.png", tmp_path / "t.json"
    show_schedule(hand_plan(), _args("--png", str(png), "--trace", str(trace), "--width", "40"))
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("stage ")]
    assert len(rows) == 4 and all(len(r.split("|")[1]) == 40 for r in rows)
    assert f"wrote {png}" in out and f"wrote {trace}" in out
    with Image.open(png) as img:
        assert img.format == "PNG"
    events = json.loads(trace.read_text())["traceEvents"]
    assert {e["tid"] for e in events if e["ph"] == "X" and e["pid"] == 0} == {0, 1, 2, 3}


def test_no_timeline_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    show_schedule(hand_plan(), _args("--no-timeline"))
    assert capsys.readouterr().out == ""


def test_a_too_narrow_timeline_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(AutopipeError, match="--width 3 is too narrow"):
        check_show_args(_args("--width", "3"))
    from autopipe.cli.main import main

    hand_plan().save(tmp_path / "plan.json")
    assert main(["show", str(tmp_path / "plan.json"), "--width", "3"]) == 2
    out = capsys.readouterr()
    assert out.out == "" and "too narrow" in out.err  # before the table (after it until 2026-12-07)


def test_runtime_costs_slow_the_simulated_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from autopipe.schedule.runtime_costs import RuntimeCosts

    RuntimeCosts(forward_overhead_s=0.5, send_latency_s=0.1).save(tmp_path / "c.json")
    show_schedule(hand_plan(), _args("--width", "40"))
    plain = capsys.readouterr().out
    args = _args("--width", "40", "--runtime-costs", str(tmp_path / "c.json"))
    show_schedule(hand_plan(), args, check_show_args(args))
    costed = capsys.readouterr().out
    assert "with the runtime costs of" in costed and "with the runtime costs" not in plain

    def step(text: str) -> float:
        return float(text.split("simulated step ")[1].split(" s,")[0])

    assert step(costed) > step(plain)


def test_runtime_costs_are_not_counted_twice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """[Note: runtime costs counted once]: a plan priced with its profile's runtime costs
    showed them added a second time (a ViT plan of 8.166 ms simulated at 9.190 ms)."""
    import dataclasses

    from autopipe.cli.main import main
    from autopipe.schedule.runtime_costs import RuntimeCosts
    from autopipe.schedule.show import check_runtime_costs

    RuntimeCosts(forward_overhead_s=0.5, send_latency_s=0.1).save(tmp_path / "c.json")
    priced = dataclasses.replace(hand_plan(), options={
        **hand_plan().options, "runtime": {"forward_overhead_s": 2e-4, "backward_overhead_s": 1e-4}})
    with pytest.raises(AutopipeError, match=r"already counts the runtime costs of its profile "
                                            r"\(200\.0 µs / 100\.0 µs per forward / backward"):
        check_runtime_costs(priced, _args("--runtime-costs", str(tmp_path / "c.json")))
    # a plan priced without them takes them, where something shows the simulation
    check_runtime_costs(hand_plan(), _args("--runtime-costs", str(tmp_path / "c.json")))
    with pytest.raises(AutopipeError, match="which --no-timeline turns off"):
        check_runtime_costs(hand_plan(), _args("--runtime-costs", str(tmp_path / "c.json"), "--no-timeline"))
    check_runtime_costs(hand_plan(), _args("--runtime-costs", str(tmp_path / "c.json"), "--no-timeline",
                                           "--trace", str(tmp_path / "t.json")))
    hand_plan().save(tmp_path / "plan.json")
    assert main(["show", str(tmp_path / "plan.json"), "--runtime-costs", str(tmp_path / "c.json"),
                 "--no-timeline"]) == 2
    assert capsys.readouterr().out == ""  # refused before the table
