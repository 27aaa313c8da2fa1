"""The receive buffers a rank holds are what the plan charges ([Note: the pipeline's buffers]
in ``autopipe.partition.costs``): one per micro-batch for what a stage receives and for the
gradients of what it sends; and so is the batch it takes ([Note: the batch a rank holds])."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import autopipe
from autopipe.runtime.launch import launch
from autopipe.spec import example_target

from .conftest import ROOT

SPEC = f"{ROOT / 'examples' / 'unet.py'}:build"


@pytest.mark.parametrize("microbatches", [2, 6])
def test_the_receive_buffers_are_what_the_plan_charges(tmp_path: Path, microbatches: int) -> None:
    """The U-Net sends three skip tensors across its cut; each rank's stage keeps m of each
    (and of their gradients) after two steps, as ``memory.buffers`` says; ``Pipe.take``
    leaves stage 0's rank the inputs alone and the last stage's the target, as
    ``memory.batch`` says."""
    spec = autopipe.load_spec(SPEC)
    plan = autopipe.plan(spec.model, spec.example_inputs, num_stages=2, microbatches=microbatches,
                         profile="estimate", loss_fn=spec.loss_fn, target=example_target(spec))
    plan.save(tmp_path / "plan.json")
    assert sum(x.bytes for x in plan.stages[0].sends) > 0
    with open(tmp_path / "log.txt", "w") as f:
        result = launch([sys.executable, str(ROOT / "tests" / "buffers_rank.py"), SPEC, str(tmp_path / "plan.json"),
                         str(tmp_path)], 2, env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
                        timeout_s=300, grace_s=20, stdout=f, stderr=subprocess.STDOUT, log=f)
    assert result.code == 0, (tmp_path / "log.txt").read_text()[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    held = {int(k): v for r in ranks for k, v in r["buffers"].items()}
    assert held == {s.index: s.memory.buffers for s in plan.stages}
    assert [r["has"] for r in ranks] == [[True, False], [False, True]]
    assert [r["batch"] for r in ranks] == [s.memory.batch for s in plan.stages]
    assert all(s.memory.batch > 0 for s in plan.stages)
    sent = sum(x.bytes for x in plan.stages[0].sends)
    assert held == {0: microbatches * sent, 1: microbatches * sent}
