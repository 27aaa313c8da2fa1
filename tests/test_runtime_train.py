"""Tests for autopipe/runtime/train.py: pipeline training on gloo ranks equals one process.

Each job starts its ranks once (tests/runtime_worker.py) and trains every case in it;
the tests then compare each case with ``reference_train`` on a fresh copy of the model.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

from autopipe.runtime.optim import TrainConfig
from autopipe.runtime.reference import reference_train
from autopipe.runtime.timeline import STEPS_PID
from autopipe.runtime.train import free_port

from .conftest import ROOT
from .runtime_cases import CASES, TINY, WORKER_ENV, Case, compare_with_one_process, run_job

pytestmark = pytest.mark.distributed

# one pipeline each; the data-parallel cases run in tests/test_runtime_data_parallel.py
JOBS = {n: [c for c in CASES.values() if c.replicas == 1 and c.world_size == n] for n in (2, 4)}
UNTIED = CASES["gpt2-2-1f1b-untied"]
ENV = WORKER_ENV


@pytest.fixture(scope="module")
def job_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Run every job once; case results land in one folder per world size."""
    dirs = {}
    for ranks, cases in JOBS.items():
        dirs[ranks] = tmp_path_factory.mktemp(f"ranks{ranks}")
        run_job(dirs[ranks], ranks, cases)
    return dirs


@pytest.mark.parametrize("case", [c for c in JOBS[2] if c.tied_sync], ids=lambda c: c.name)
def test_two_ranks_equal_one_process(case: Case, job_dirs: dict[int, Path]) -> None:
    compare_with_one_process(case, job_dirs[2])


@pytest.mark.parametrize("case", JOBS[4], ids=lambda c: c.name)
def test_four_ranks_equal_one_process(case: Case, job_dirs: dict[int, Path]) -> None:
    compare_with_one_process(case, job_dirs[4])


def test_untied_copies_would_drift(job_dirs: dict[int, Path]) -> None:
    """Negative control: without the tied-gradient all-reduce, GPT-2's embedding copies differ."""
    files = sorted(job_dirs[2].glob(f"{UNTIED.name}.rank*.pt"))
    copies = [torch.load(f)["state"]["transformer.wte.weight"] for f in files]
    assert len(copies) == 2 and not torch.allclose(copies[0], copies[1], rtol=1e-5, atol=1e-6)
    with pytest.raises(AssertionError):
        compare_with_one_process(UNTIED, job_dirs[2])


# --- the command line, and failures -------------------------------------------------------------

MLP = [f"--spec-arg={k}={v}" for k, v in TINY["mlp"].items() if k != "batch_size"] + ["--device=cpu"]


@pytest.fixture(scope="module")
def mlp_plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("plan") / "mlp.json"
    Case("mlp", 2).build()[2].save(path)  # made by the planner
    return path


def _autopipe(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "autopipe", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, **ENV, **(env or {})})


def test_cli_launch_trains_and_reports(mlp_plan: Path, tmp_path: Path) -> None:
    """Trains as one process does, and with ``--timeline`` writes every rank's actions
    ([Note: a measured timeline]) without changing a loss."""
    out = _autopipe("train", "examples/mlp.py:build", *MLP, "--plan", str(mlp_plan), "--steps", "3",
                    "--batch-size", "16", "--optimizer", "sgd-momentum", "--lr", "0.05", "--launch", "2",
                    "--timeline", str(tmp_path / "timeline.json"))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    _check_timeline(json.loads((tmp_path / "timeline.json").read_text()), microbatches=4, steps=3)
    assert any(ln.startswith("timeline, median after the first step") for ln in lines)
    assert any(ln.startswith("  stage 1: F ") and ln.endswith("per micro-batch") for ln in lines)
    steps = [ln for ln in lines if ln.startswith("step ")]
    assert [ln.split()[1] for ln in steps] == ["1/3", "2/3", "3/3"]
    assert any(ln.startswith("done: 3 steps") and "steps/s" in ln for ln in lines)
    assert any(ln.startswith("  median step ") and "the plan predicted" in ln for ln in lines)
    assert "messages a micro-batch at each cut, forward/back: 1/1" in lines  # [Note: one message per cut]
    case = CASES["mlp-2-1f1b"]
    spec, graph, _ = case.build()
    ref = reference_train(spec, graph, 4, TrainConfig(steps=3, lr=0.05, optimizer="sgd-momentum"))
    printed = [float(ln.split()[3]) for ln in steps]
    torch.testing.assert_close(torch.tensor(printed), torch.tensor(ref), rtol=0, atol=2e-6)


def _check_timeline(trace: dict[str, Any], microbatches: int, steps: int) -> None:
    """Each rank ran one forward and one backward of every micro-batch of its stage a step,
    the loss on the last stage only, one optimizer step a step, one action at a time."""
    timed = [e for e in trace["traceEvents"] if e["ph"] == "X" and e["pid"] == STEPS_PID]
    for rank in (0, 1):
        mine = sorted((e for e in timed if e["tid"] == rank), key=lambda e: e["ts"])
        for step in range(1, steps + 1):
            kinds = Counter(e["cat"] for e in mine if e["args"]["step"] == step)
            assert kinds["forward"] == kinds["backward"] == microbatches
            assert kinds["loss"] == (microbatches if rank == 1 else 0)
            assert kinds["optimizer"] == 1 and kinds["post"] > 0
            assert {e["args"]["stage"] for e in mine if e["cat"] == "forward"} == {rank}
        for a, b in itertools.pairwise(mine):
            assert a["ts"] + a["dur"] <= b["ts"] + 1e-3, (a, b)  # (µs, rounded to 1 ns)
    simulated = [e for e in trace["traceEvents"] if e["ph"] == "X" and e["pid"] == 0]
    assert len([e for e in simulated if e["cat"] == "forward"]) == 2 * microbatches
    assert sorted(map(int, trace["otherData"]["measured"]["step_s"])) == list(range(1, steps + 1))


def test_mismatched_plan_stops_before_any_rank_starts(mlp_plan: Path) -> None:
    # another micro-batch shape: batch_size 8 instead of 4
    t = time.monotonic()
    out = _autopipe("train", "examples/mlp.py:build", *MLP, "--plan", str(mlp_plan), "--steps", "3",
                    "--batch-size", "32", "--launch", "2")
    assert out.returncode == 2
    assert "another model or micro-batch shape" in out.stderr and "hint:" in out.stderr
    assert "step" not in out.stdout and "Traceback" not in out.stderr
    # under torchrun each rank checks before the rendezvous: a lone rank 0 of 2 does not wait
    lone = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(free_port())}
    out = _autopipe("train", "examples/mlp.py:build", "--plan", str(mlp_plan), "--steps", "3",
                    "--timeout", "60", env=lone)
    assert out.returncode == 2 and "another model or micro-batch shape" in out.stderr
    assert time.monotonic() - t < 50


def test_wrong_world_size(mlp_plan: Path) -> None:
    out = _autopipe("train", "examples/mlp.py:build", *MLP, "--plan", str(mlp_plan), "--steps", "3",
                    "--batch-size", "16", "--launch", "3")
    assert out.returncode == 2
    assert "the plan runs on 2 ranks (2 stages, schedule 1f1b) but the world size is 3" in out.stderr
    assert "--nproc-per-node 2" in out.stderr and "Traceback" not in out.stderr


def _start_ranks(plan: Path, timeout_s: float) -> list[subprocess.Popen[str]]:
    port = str(free_port())
    cmd = [sys.executable, "-m", "autopipe", "train", "examples/mlp.py:build", *MLP, "--plan", str(plan),
           "--batch-size", "16", "--steps", "100000", "--timeout", str(timeout_s)]
    return [subprocess.Popen(cmd, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env={**os.environ, **ENV, "RANK": str(r), "LOCAL_RANK": str(r),
                                  "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port})
            for r in range(2)]


@pytest.mark.parametrize(("sig", "limit"), [(signal.SIGKILL, 30.0), (signal.SIGSTOP, 40.0)],
                         ids=["killed", "hung"])
def test_a_dead_or_hung_rank_stops_the_others(mlp_plan: Path, sig: int, limit: float) -> None:
    """Rank 0 is killed (or frozen) mid-training; rank 1 exits with an error in bounded time."""
    procs = _start_ranks(mlp_plan, timeout_s=5)
    try:
        assert procs[1].stdout is not None
        for line in procs[1].stdout:  # wait until training runs
            if line.startswith("step 3/"):
                break
        os.kill(procs[0].pid, sig)
        t = time.monotonic()
        procs[1].wait(timeout=limit)
        assert time.monotonic() - t < limit
        err = procs[1].stderr.read() if procs[1].stderr else ""
        assert procs[1].returncode == 2, err
        assert "rank 1 (stage 1) lost a peer rank" in err and "hint:" in err
        assert "Traceback" not in err
    finally:
        for p in procs:
            p.kill()
            p.wait()


class _ByDevice(torch.nn.Module):
    """Chooses by the device type, as transformers' grouped_mm MoE experts do for
    torch.histc (mended since: [Note: the meta branch's histc]): int32 ids for
    ``logcumsumexp`` off the CPU, which has no int ``logcumsumexp``, float ones on it."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        ids = h.argmax(-1)
        ids = ids.float() if h.device.type == "cpu" else ids.int()
        return h * torch.logcumsumexp(ids, 0)[-1].float()


def test_a_meta_built_model_whose_code_chose_by_the_device_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """Qwen2-MoE built on meta (`--spec-arg device=meta`) failed its first CPU step with
    `"histogram_cpu" not implemented for 'Int'` and no word of why: the graph traced on meta
    holds the int32 branch. Until 2026-12-07; now the hint names the trace on meta and the
    ways out (and that op is mended: ``tests/test_runtime_kernels.py``). A model built on
    the CPU trains."""
    import autopipe
    from autopipe.errors import RuntimeStageError
    from autopipe.runtime.train import train
    from autopipe.spec import ModelSpec

    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)

    def spec(device: str) -> ModelSpec:
        torch.manual_seed(0)
        with torch.device(device):
            model = _ByDevice()
        return ModelSpec(model=model, example_inputs=(torch.randn(2, 4),),
                         loss_fn=lambda out, y: ((out - y) ** 2).mean(),
                         batch=lambda n, step=0: ((torch.randn(2 * n, 4),), torch.randn(2 * n, 4)))

    config = TrainConfig(steps=1, device="cpu", pin_malloc=False, pin_cores=False, flush_denormal=False)
    meta = spec("meta")
    plan = autopipe.plan(meta.model, meta.example_inputs, num_stages=1, microbatches=1, profile="estimate")
    with pytest.raises(RuntimeStageError, match="logcumsumexp_out_cpu\" not implemented for 'Int'") as info:
        train(meta, plan, config, log=lambda line: None)
    assert info.value.hint is not None and "traced on the meta device" in info.value.hint
    assert "_experts_implementation" in info.value.hint

    cpu = spec("cpu")
    plan = autopipe.plan(cpu.model, cpu.example_inputs, num_stages=1, microbatches=1, profile="estimate")
    assert len(train(cpu, plan, config, log=lambda line: None).step_s) == 1
