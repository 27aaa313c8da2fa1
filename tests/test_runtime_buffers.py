"""The receive buffers a rank holds are what the plan charges ([Note: the pipeline's buffers]
in ``autopipe.partition.costs``): a received activation until its micro-batch's backward, one
received gradient at a time, nothing between steps ([Note: receive buffers made when needed]
in ``autopipe._torch_pipelining``); and so is the batch it takes ([Note: the batch a rank
holds])."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import autopipe
from autopipe.partition.chunks import chunk_inflight
from autopipe.runtime.launch import launch
from autopipe.runtime.placement import rank_of_stages
from autopipe.spec import example_target

from .conftest import ROOT

SPEC = f"{ROOT / 'examples' / 'unet.py'}:build"


@pytest.mark.parametrize("microbatches", [2, 6])
def test_the_receive_buffers_are_what_the_plan_charges(tmp_path: Path, microbatches: int) -> None:
    """The U-Net sends three skip tensors across its cut. Its first rank receives their
    gradients, one micro-batch at a time, the one before still held by torch's loop until
    the next is posted: two at once (``memory.buffers``). Its second receives the tensors,
    each kept until that micro-batch's backward, one in flight under 1F1B on the last stage
    (``memory.activations``), and the one before held until the next is posted (its
    ``memory.buffers``). Whatever the micro-batch count: torch's stages would keep m of
    each. After the steps neither holds any. ``Pipe.take`` leaves stage 0's rank the inputs
    alone and the last stage's the target, as ``memory.batch`` says."""
    spec = autopipe.load_spec(SPEC)
    plan = autopipe.plan(spec.model, spec.example_inputs, num_stages=2, microbatches=microbatches,
                         profile="estimate", loss_fn=spec.loss_fn, target=example_target(spec))
    plan.save(tmp_path / "plan.json")
    sent = sum(x.bytes for x in plan.stages[0].sends)
    assert sent > 0
    with open(tmp_path / "log.txt", "w") as f:
        result = launch([sys.executable, str(ROOT / "tests" / "buffers_rank.py"), SPEC, str(tmp_path / "plan.json"),
                         str(tmp_path)], 2, env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
                        timeout_s=300, grace_s=20, stdout=f, stderr=subprocess.STDOUT, log=f)
    assert result.code == 0, (tmp_path / "log.txt").read_text()[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [s.memory.buffers for s in plan.stages] == [2 * sent, sent]
    assert [r["peak"] for r in ranks] == [plan.stages[0].memory.buffers, 1 * sent + plan.stages[1].memory.buffers]
    assert [r["held"] for r in ranks] == [{"0": 0}, {"1": 0}]
    assert [r["has"] for r in ranks] == [[True, False], [False, True]]
    assert [r["batch"] for r in ranks] == [s.memory.batch for s in plan.stages]
    assert all(s.memory.batch > 0 for s in plan.stages)


@pytest.mark.parametrize("schedule", ["gpipe", "zb-h1", "interleaved-1f1b", "zbv"])
def test_other_schedules_hold_no_more_than_charged(tmp_path: Path, schedule: str) -> None:
    """Under the other schedules (their receives posted ahead, a V's tip handed over in
    memory, a split backward) the received storages a rank holds at once stay within its
    stages' ``memory.buffers`` and, per micro-batch each holds in flight at most, what it
    receives over a link; after the steps none is held."""
    spec = autopipe.load_spec(SPEC)
    chunks = 2 if schedule in ("interleaved-1f1b", "zbv") else 1
    plan = autopipe.plan(spec.model, spec.example_inputs, num_stages=2, microbatches=4, schedule=schedule,
                         virtual_stages=chunks, profile="estimate", loss_fn=spec.loss_fn,
                         target=example_target(spec))
    plan.save(tmp_path / "plan.json")
    with open(tmp_path / "log.txt", "w") as f:
        result = launch([sys.executable, str(ROOT / "tests" / "buffers_rank.py"), SPEC, str(tmp_path / "plan.json"),
                         str(tmp_path)], 2, env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
                        timeout_s=300, grace_s=20, stdout=f, stderr=subprocess.STDOUT, log=f)
    assert result.code == 0, (tmp_path / "log.txt").read_text()[-3000:]
    ranks = rank_of_stages(plan)
    inflight = chunk_inflight(plan.schedule, 2, plan.microbatches, chunks) if chunks > 1 else \
        [plan.microbatches if schedule == "gpipe" else min(plan.microbatches, 2)] * 2
    for r in range(2):
        got = json.loads((tmp_path / f"rank{r}.json").read_text())
        charged = 0
        for s in plan.stages:
            if ranks[s.index] == r:
                linked = s.index > 0 and ranks[s.index - 1] != r
                received = sum(x.bytes for x in plan.stages[s.index - 1].sends) if linked else 0
                charged += s.memory.buffers + inflight[s.index] * received
        assert 0 < got["peak"] <= charged, (r, got["peak"], charged)
        assert set(got["held"].values()) == {0}
