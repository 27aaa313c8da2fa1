"""Tests for autopipe/quality/replan.py (`autopipe check PLAN --spec SPEC`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from autopipe.cli.main import main
from autopipe.plan_format import Plan

from .conftest import ROOT

MLP = f"{ROOT}/examples/mlp.py:build"


def _plan_and_check(tmp_path: Path, *plan_flags: str) -> tuple[Path, Path]:
    """Plan the 4-layer MLP (estimated for an H100) with ``plan_flags``, then re-plan it with
    `check --spec`, which must say OK; the plan and the re-planned plan's paths."""
    plan, new = tmp_path / "plan.json", tmp_path / "new.json"
    assert main(["plan", MLP, "--spec-arg", "layers=4", "--stages", "2", "--device-spec", "h100",
                 *plan_flags, "-o", str(plan)]) == 0
    assert main(["check", str(plan), "--spec", MLP, "--spec-arg", "layers=4", "-o", str(new)]) == 0
    return plan, new


@pytest.mark.parametrize("schedule", ["interleaved-1f1b", "zbv", "dualpipev"])
def test_plans_with_chunks_replan_the_same(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           schedule: str) -> None:
    """A plan of 2 ranks x 2 chunks is re-planned on its 2 ranks with 2 chunks each (it was
    re-planned as 4 ranks on its 2 devices: exit 2) and, estimated, to the byte."""
    plan, new = _plan_and_check(tmp_path, "--schedule", schedule)
    assert "OK: not worse" in capsys.readouterr().out
    assert Plan.load(plan).num_stages == 4
    assert new.read_bytes() == plan.read_bytes()


def test_remake_mode_is_kept(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A plan made with --remake all is re-planned with it (it was re-planned with auto, whose
    plan may differ: GPT-2's read 3.2% more memory)."""
    plan, new = _plan_and_check(tmp_path, "--remake", "all")
    capsys.readouterr()
    assert Plan.load(new).options["remake"] == {"mode": "all"}
    assert new.read_bytes() == plan.read_bytes()


def test_a_batch_size_search_is_run_again(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """[Note: re-planning a search]: a --batch-size plan is re-planned by the same search over
    micro-batch counts (until 2026-12-07 its chosen count alone: the new plan had no search)."""
    plan, new = _plan_and_check(tmp_path, "--batch-size", "16")
    err = capsys.readouterr().err
    assert "is the choice of a --batch-size search; the same search" in err, err
    rows = Plan.load(new).options["search"]
    assert sorted({r["microbatches"] for r in rows}) == [1, 2, 4, 8, 16]
    assert rows == Plan.load(plan).options["search"]


def test_a_schedule_search_is_run_again_with_its_chunks(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """`--schedule auto --virtual-stages 3` is re-planned with 3 chunks for the interleaved
    candidate (until 2026-12-07 the default 2), and named a --schedule auto search (it was
    called a --batch-size search)."""
    plan, new = _plan_and_check(tmp_path, "--schedule", "auto", "--virtual-stages", "3", "--microbatches", "4")
    err = capsys.readouterr().err
    assert "is the choice of a --schedule auto search; the same search (schedule auto, microbatches 4, " \
           "virtual_stages 3" in err, err
    rows = Plan.load(new).options["search"]
    assert {r["schedule"]: r.get("virtual_stages") for r in rows}["interleaved-1f1b"] == 3
    assert rows == Plan.load(plan).options["search"]


def test_a_gpus_search_is_run_again(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A --gpus plan is re-planned over every pipeline degree and micro-batch size its search
    tried (until 2026-12-07 over its chosen degree alone), and compared per step."""
    plan, new = tmp_path / "plan.json", tmp_path / "new.json"
    assert main(["plan", MLP, "--spec-arg", "layers=4", "--gpus", "2", "--batch-size", "8",
                 "--device-spec", "h100", "-o", str(plan)]) == 0
    assert main(["check", str(plan), "--spec", MLP, "--spec-arg", "layers=4", "-o", str(new)]) == 0
    out = capsys.readouterr()
    assert "OK: not worse" in out.out and "the choice of a --gpus search" in out.err, out.err
    old_rows, new_rows = Plan.load(plan).options["degrees"], Plan.load(new).options["degrees"]
    assert {r["stages"] for r in new_rows} == {1, 2}
    assert sorted((r["stages"], r["microbatch_size"], r["schedule"]) for r in new_rows) == sorted(
        (r["stages"], r["microbatch_size"], r["schedule"]) for r in old_rows)
