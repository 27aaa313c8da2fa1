"""Tests for autopipe/runtime/data_parallel.py: pipeline × data-parallel training equals one
process on the global batch; the rank grid, the batch split, the CLI on a ``--gpus`` plan.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import autopipe
from autopipe.errors import PlanError, PlanMismatchError, SpecError
from autopipe.plan_format import DataParallel
from autopipe.runtime import consolidate
from autopipe.runtime.data_parallel import replica_share
from autopipe.runtime.optim import TrainConfig
from autopipe.runtime.placement import check_world_size, grid_position, rank_grid
from autopipe.runtime.reference import reference_train

from .conftest import ROOT
from .runtime_cases import CASES, TINY, WORKER_ENV, Case, compare_with_one_process, run_job

JOBS = {n: [c for c in CASES.values() if c.replicas > 1 and c.world_size == n] for n in (2, 4)}


@pytest.fixture(scope="module")
def job_dir(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    ranks: int = request.param
    out = tmp_path_factory.mktemp(f"dp{ranks}")
    run_job(out, ranks, JOBS[ranks])
    return out


@pytest.mark.distributed
@pytest.mark.parametrize("job_dir", [2], indirect=True)
@pytest.mark.parametrize("case", JOBS[2], ids=lambda c: c.name)
def test_one_stage_two_replicas_equal_one_process(case: Case, job_dir: Path) -> None:
    compare_with_one_process(case, job_dir)


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("job_dir", [4], indirect=True)
@pytest.mark.parametrize("case", JOBS[4], ids=lambda c: c.name)
def test_two_stages_two_replicas_equal_one_process(case: Case, job_dir: Path) -> None:
    """pp 2 × dp 2 on 4 gloo ranks: GPT-2 (tied embedding across the stages, ``pipelines``
    placement, an explicit mesh) and Llama (``replicas`` placement, ``init_device_mesh``)."""
    compare_with_one_process(case, job_dir)


# --- the rank grid and the batch split (no processes) -------------------------------------------

@pytest.fixture(scope="module")
def mlp_plan():  # type: ignore[no-untyped-def]
    return Case("mlp", 2).build(hand=True)


def _with_replicas(plan: autopipe.Plan, ranks: tuple[tuple[int, ...], ...]) -> autopipe.Plan:
    dp = DataParallel(degree=len(ranks[0]), ranks=ranks, batch_size=8 * len(ranks[0]))
    return dataclasses.replace(plan, data_parallel=dp)


def test_rank_grid_follows_the_placement(mlp_plan) -> None:  # type: ignore[no-untyped-def]
    _, _, plan = mlp_plan
    assert rank_grid(plan) == [[0], [1]]
    pipelines = _with_replicas(plan, ((0, 2, 4), (1, 3, 5)))  # rank = replica·p + stage
    assert rank_grid(pipelines) == [[0, 2, 4], [1, 3, 5]]
    assert grid_position(pipelines, 3) == (1, 1) and grid_position(pipelines, 4) == (0, 2)
    replicas = _with_replicas(plan, ((0, 1, 2), (3, 4, 5)))  # rank = stage·dp + replica
    assert grid_position(replicas, 3) == (1, 0)
    check_world_size(replicas, 6)
    with pytest.raises(PlanMismatchError, match=r"runs on 6 ranks \(2 stages x 3 data-parallel "
                                                r"replicas, schedule 1f1b\) but the world size is 4") as e:
        check_world_size(replicas, 4)
    assert e.value.hint and "--nproc-per-node 6" in e.value.hint


def test_a_pipeline_out_of_rank_order_is_refused(mlp_plan) -> None:  # type: ignore[no-untyped-def]
    _, _, plan = mlp_plan
    with pytest.raises(PlanError, match=r"replica 1 runs its pipeline on ranks \[3, 1\]"):
        rank_grid(_with_replicas(plan, ((0, 3), (2, 1))))


def test_each_replica_takes_its_slice_of_the_global_batch() -> None:
    x, y = torch.arange(24).reshape(12, 2), torch.arange(12)
    shares = [replica_share((x, "const"), y, r, 3) for r in range(3)]
    assert [s[0][1] for s in shares] == ["const"] * 3
    torch.testing.assert_close(torch.cat([s[0][0] for s in shares]), x)
    torch.testing.assert_close(shares[1][1], torch.arange(4, 8))
    with pytest.raises(SpecError, match="a batch of 12 samples does not split over 5 replicas"):
        replica_share((x,), y, 0, 5)


# --- the command line: a plan made with --gpus, trained as made, saved and resumed ---------------

KNOBS = [f"--spec-arg={k}={v}" for k, v in TINY["mlp"].items() if k != "batch_size"]
MLP = str(ROOT / "examples" / "mlp.py") + ":build"


def _autopipe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "autopipe", *args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env={**os.environ, **WORKER_ENV})


@pytest.mark.slow
@pytest.mark.distributed
def test_cli_trains_a_gpus_plan_as_made_and_resumes(tmp_path: Path) -> None:
    plan_path, ckpt = tmp_path / "plan.json", tmp_path / "ckpt"
    made = _autopipe("plan", MLP, *KNOBS, "--device-spec", "h100", "--gpus", "4", "--batch-size", "32",
                     "--schedule", "1f1b", "--method", "dp", "-o", str(plan_path))
    assert made.returncode == 0, made.stderr
    plan = autopipe.Plan.load(plan_path)
    assert plan.data_parallel is not None and plan.data_parallel.world_size == 4 and plan.replicas > 1

    wrong = _autopipe("train", MLP, *KNOBS, "--plan", str(plan_path), "--steps", "1", "--device", "cpu",
                      "--launch", "2")
    assert wrong.returncode == 2 and "but the world size is 2" in wrong.stderr
    assert "--nproc-per-node 4" in wrong.stderr and "Traceback" not in wrong.stderr

    common = [MLP, *KNOBS, "--plan", str(plan_path), "--device", "cpu", "--optimizer", "sgd-momentum",
              "--lr", "0.05", "--save", str(ckpt), "--launch", "4"]
    first = _autopipe("train", *common, "--steps", "2")
    assert first.returncode == 0, first.stderr
    resumed = _autopipe("train", *common, "--steps", "3", "--resume", str(ckpt))
    assert resumed.returncode == 0, resumed.stderr
    assert f"{plan.replicas} data-parallel replicas" in first.stdout
    printed = [float(ln.split()[3]) for out in (first, resumed) for ln in out.stdout.splitlines()
               if ln.startswith("step ")]
    assert len(printed) == 3  # one rank reports: the last stage of replica 0

    spec = autopipe.load_spec(MLP, **{**TINY["mlp"], "batch_size": plan.options["microbatch_size"]})
    graph = autopipe.trace(spec.model, spec.example_inputs)
    ref = reference_train(spec, graph, plan.microbatches * plan.replicas,
                          TrainConfig(steps=3, lr=0.05, optimizer="sgd-momentum"))
    torch.testing.assert_close(torch.tensor(printed), torch.tensor(ref), rtol=0, atol=2e-6)
    state, info = consolidate(ckpt)  # what the replicas saved, once: the model one process trains
    assert info.step == 3 and info.world_size == 4
    for name, value in graph.gm.state_dict().items():
        torch.testing.assert_close(state[name], value, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


# --- a plan that shards the optimizer (ZeRO-1) -------------------------------------------------

def test_a_sharded_optimizer_plan_is_not_trained_unsharded(mlp_plan, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Trained as DDP, every replica would hold the whole optimizer state the plan split."""
    from autopipe.runtime.train import check_unsharded

    _, _, plan = mlp_plan
    plain = _with_replicas(plan, ((0, 2), (1, 3)))
    check_unsharded(plain)
    assert plain.data_parallel is not None
    sharded = dataclasses.replace(plain, data_parallel=dataclasses.replace(plain.data_parallel,
                                                                           shard_optimizer=True))
    with pytest.raises(PlanError, match=r"shards each stage's optimizer states over its 2 data-parallel") as e:
        check_unsharded(sharded)
    assert e.value.hint and "--shard-optimizer" in e.value.hint
    sharded.save(tmp_path / "plan.json")
    knobs = [f"--spec-arg={k}={v}" for k, v in TINY["mlp"].items()]
    run = _autopipe("train", MLP, *knobs, "--plan", str(tmp_path / "plan.json"), "--steps", "1",
                    "--device", "cpu", "--launch", "4")
    assert run.returncode == 2, run.stderr
    assert "data_parallel.shard_optimizer" in run.stderr and "Traceback" not in run.stderr
