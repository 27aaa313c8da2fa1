"""Tests for how `autopipe train` reports a rank that fails after the rendezvous
([Note: the cause first] in autopipe/cli/train_cmd.py; autopipe/runtime/group.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from autopipe.cli.main import main

from .conftest import ROOT
from .runtime_cases import TINY, Case


def _mlp_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[str]]:
    """The tiny MLP's hand-made 2-stage plan, saved, and its spec knobs; one thread a rank."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    plan = tmp_path / "plan.json"
    Case("mlp", 2).build(hand=True)[2].save(plan)
    return plan, [f"--spec-arg={k}={v}" for k, v in TINY["mlp"].items()]


@pytest.mark.parametrize(("build", "failed", "timeout"), [
    ("build", "in step 1: ValueError: this loss fails on purpose", "300"),
    ("build_batch", "while drawing the batch of step 2: KeyError: 'no such shard'", "300"),  # was a traceback
    # the peer waits CAUSE_FIRST_S (2 s) before it says so: --launch stopped it after --timeout
    ("build", "in step 1: ValueError: this loss fails on purpose", "1"),
])
def test_the_failing_ranks_error_comes_first_with_its_line(tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch, build: str,
                                                            failed: str, timeout: str) -> None:
    """Its peer lost it and said so too, often first, and --launch blamed the lowest rank."""
    plan, knobs = _mlp_plan(tmp_path, monkeypatch)
    code = main(["train", f"tests.failing_loss_worker:{build}", *knobs, "--plan", str(plan), "--steps", "2",
                 "--device", "cpu", "--launch", "2", "--timeout", timeout])
    err = capfd.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "error:" in line]
    source = Path(__file__).parent / "failing_loss_worker.py"
    assert errors[0].startswith(f"autopipe train: error: rank 1 (stage 1) failed {failed} (at {source}:"), err
    assert errors[0].endswith(" in loss_fn)" if build == "build" else " in batch)"), err
    assert "rank 0 (stage 0) lost a peer rank" in errors[1] and "This is typically" not in errors[1], err
    assert errors[-1].startswith("autopipe train: error: rank 1 failed first (exit codes [2, 2])"), err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA plan trains here")
def test_launch_refuses_a_cuda_plan_without_cuda_before_any_rank(tmp_path: Path,
                                                                 capfd: pytest.CaptureFixture[str]) -> None:
    """Each of the ranks started for it said so, and the launcher after them."""
    plan = tmp_path / "plan.json"
    Case("mlp", 2).build(hand=True)[2].save(plan)
    data = json.loads(plan.read_text())
    for stage in data["stages"]:
        stage["device"] = "cuda"
    plan.write_text(json.dumps(data))
    knobs = [f"--spec-arg={k}={v}" for k, v in TINY["mlp"].items()]
    args = ["train", f"{ROOT / 'examples' / 'mlp.py'}:build", *knobs, "--plan", str(plan), "--steps", "2"]
    assert main([*args, "--launch", "2"]) == 2
    err = capfd.readouterr().err
    assert err.count("error:") == 1 and "rank 0 should run on cuda but torch sees no CUDA device" in err, err
    assert "hint: pass --device cpu" in err


def test_a_killed_rank_is_named_with_its_signal(tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """It prints nothing; the last line said "its message above says why"."""
    plan, knobs = _mlp_plan(tmp_path, monkeypatch)
    code = main(["train", "tests.failing_loss_worker:build_killed", *knobs, "--plan", str(plan), "--steps", "2",
                 "--device", "cpu", "--launch", "2"])
    err = capfd.readouterr().err
    assert code == 1 and "Traceback" not in err, err
    assert err.splitlines()[-1] == ("autopipe train: error: rank 1 failed first (exit codes [2, -9]); it was killed "
                                    "by SIGKILL (out of memory? the kernel's log says)"), err


def test_the_first_loss_that_is_not_finite_is_noted(tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A learning rate far too large: the run went on printing ``loss nan`` and said nothing."""
    plan, knobs = _mlp_plan(tmp_path, monkeypatch)
    code = main(["train", f"{ROOT / 'examples' / 'mlp.py'}:build", *knobs, "--plan", str(plan), "--steps", "4",
                 "--device", "cpu", "--launch", "2", "--optimizer", "sgd", "--lr", "1e30"])
    out, err = capfd.readouterr()
    assert code == 0
    bad = [line for line in out.splitlines() if line.startswith("step ") and "loss nan" in line]
    assert len(bad) >= 2, out
    step = bad[0].split()[1].split("/")[0]
    notes = [line for line in err.splitlines() if "is nan" in line]
    assert notes == [f"note: the loss of step {step} is nan; training goes on, its updates likely nan too: "
                     "try a lower --lr (now 1e+30), or check that step's batch"], err
