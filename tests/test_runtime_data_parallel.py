"""Tests for autopipe/runtime/data_parallel.py: pipeline × data-parallel training equals one
process on the global batch; the rank grid, the batch split, the CLI on a ``--gpus`` plan.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import autopipe
from autopipe.errors import PlanError, PlanMismatchError, SpecError
from autopipe.plan_format import DataParallel
from autopipe.runtime import consolidate
from autopipe.runtime.data_parallel import replica_share
from autopipe.runtime.optim import TrainConfig
from autopipe.runtime.placement import check_world_size, grid_position, rank_grid
from autopipe.runtime.reference import reference_train
from autopipe.runtime.tied import canonical_names

from .conftest import ROOT
from .runtime_cases import CASES, TINY, WORKER_ENV, Case, compare_with_one_process, run_job

ZERO = [c for c in CASES.values() if c.replicas > 1 and (c.shard_optimizer or c.optimizer == "adam")]
"""ZeRO-1 cases and the unsharded ones they are compared with (one 4-rank job)."""
JOBS = {n: [c for c in CASES.values() if c.replicas > 1 and c.world_size == n and c not in ZERO] for n in (2, 4)}


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
@pytest.mark.parametrize("shard", [False, True], ids=["ddp", "zero1"])
def test_cli_trains_a_gpus_plan_as_made_and_resumes(tmp_path: Path, shard: bool) -> None:
    """Sharded (--shard-optimizer): each owner saves its parameters' momenta, and the resumed
    run continues as straight through."""
    plan_path, ckpt = tmp_path / "plan.json", tmp_path / "ckpt"
    made = _autopipe("plan", MLP, *KNOBS, "--device-spec", "h100", "--gpus", "4", "--batch-size", "32",
                     "--schedule", "1f1b", "--method", "dp", "-o", str(plan_path),
                     *(["--shard-optimizer"] if shard else []))
    assert made.returncode == 0, made.stderr
    plan = autopipe.Plan.load(plan_path)
    assert plan.data_parallel is not None and plan.data_parallel.world_size == 4 and plan.replicas > 1
    assert plan.data_parallel.shard_optimizer == shard

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
    assert (f"sharded over {plan.replicas} replicas" in first.stdout) == shard
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

@pytest.fixture(scope="module")
def zero_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("zero")
    run_job(out, 4, ZERO)
    return out


def _ranges(labels: Any) -> dict[str, list[tuple[int, int | None]]]:
    """Piece labels (``w`` or ``w[0:64]``) → per parameter, the element ranges (None: to the end)."""
    out: dict[str, list[tuple[int, int | None]]] = {}
    for label in labels:
        name, bracket, rest = label.partition("[")
        lo, hi = rest.rstrip("]").split(":") if bracket else ("0", None)
        out.setdefault(name, []).append((int(lo), None if hi is None else int(hi)))
    return out


def _check_owners(case: Case, out: Path) -> list[dict[str, Any]]:
    """Each rank's optimizer stepped the pieces it owns only; every element of a stage's
    parameters is stepped by exactly one of its replicas, and each replica steps half of
    them to within a cut's rounding. Returns the ranks' results."""
    from autopipe.runtime.zero import ALIGN

    results = [torch.load(out / f"{case.name}.rank{r}.pt") for r in range(case.world_size)]
    plan = autopipe.Plan.load(out / f"{case.name}.plan.json")
    assert plan.data_parallel is not None and plan.data_parallel.shard_optimizer
    spec = case.spec()
    graph = autopipe.trace(spec.model, spec.example_inputs)
    canonical = canonical_names(graph)
    params = {canonical.get(k, k) for k, _ in graph.gm.named_parameters(remove_duplicate=False)}
    for stage, ranks in enumerate(plan.data_parallel.ranks):
        state = results[ranks[0]]["state"]
        held = set(state) & params  # the stage's parameters, on every replica
        owned = [_ranges(results[r]["optimizer_params"]) for r in ranks]
        assert all(owned), f"stage {stage}: a replica owns no parameter"
        assert set(owned[0]) | set(owned[1]) == held, f"stage {stage}: {held ^ (set(owned[0]) | set(owned[1]))}"
        steps = [0, 0]
        for name in held:
            numel = state[name].numel()
            parts = sorted((lo, numel if hi is None else hi, k) for k in (0, 1) for lo, hi in owned[k].get(name, ()))
            assert [lo for lo, _, _ in parts] == [0] + [hi for _, hi, _ in parts[:-1]], f"{name}: {parts}"
            assert parts[-1][1] == numel, f"{name}: {parts} do not cover {numel} elements"
            for lo, hi, k in parts:
                steps[k] += hi - lo
        assert abs(steps[0] - steps[1]) <= 2 * ALIGN, f"stage {stage}: {steps} elements stepped"
    return results


@pytest.mark.distributed
@pytest.mark.parametrize("case", [c for c in ZERO if c.shard_optimizer and c.optimizer == "sgd-momentum"],
                         ids=lambda c: c.name)
def test_sharded_optimizer_trains_as_one_process(case: Case, zero_dir: Path) -> None:
    """pp 2 × dp 2, each stage's momenta split over its 2 replicas, GPT-2's embedding tied
    across the stages: the losses and the trained model equal one process's."""
    compare_with_one_process(case, zero_dir)
    _check_owners(case, zero_dir)


PAIRS = [(c, replace(c, shard_optimizer=True)) for c in ZERO if not c.shard_optimizer]


@pytest.mark.distributed
@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: p[1].name)
def test_sharded_optimizer_equals_the_unsharded_run(pair: tuple[Case, Case], zero_dir: Path) -> None:
    """The same model and batches with and without ZeRO-1 (Adam; bf16 Llama through fp32
    master weights): the same losses and trained model bit for bit, the optimizer states
    (and masters) split exactly in two over the replicas."""
    plain, zero = pair
    a = [torch.load(zero_dir / f"{plain.name}.rank{r}.pt") for r in range(4)]
    b = _check_owners(zero, zero_dir)
    assert [x["losses"] for x in a] == [x["losses"] for x in b]
    for x, y in zip(a, b):
        assert x["state"].keys() == y["state"].keys()
        for name in x["state"]:
            assert torch.equal(x["state"][name], y["state"][name]), name
        assert set(_ranges(y["optimizer_params"])) <= set(x["optimizer_params"])
        assert 0 < y["optimizer_bytes"] < x["optimizer_bytes"]
        # half, to within a cut's rounding (64 elements of fp32 master and two moments) and
        # the step counter of the part of a parameter cut in two
        assert abs(2 * y["optimizer_bytes"] - x["optimizer_bytes"]) <= 2 * 64 * 12 + 8, (y, x)
    assert 0 <= 2 * sum(y["optimizer_bytes"] for y in b) - sum(x["optimizer_bytes"] for x in a) <= 16
    assert any("[" in label for y in b for label in y["optimizer_params"]), "no parameter was cut in two"


def test_split_cuts_the_parameters_laid_end_to_end_into_equal_ranges() -> None:
    """ZeRO's flat split: each replica's range of the concatenation, a cut inside a tensor
    rounded to the alignment; the pieces cover every parameter once, in order."""
    from autopipe.runtime.zero import Piece, split

    got = split({"a": 4096, "b": 3000, "c": 1000}, 2)  # 8,096 elements: 4,048 each
    assert got == [Piece("a", 0, 4032, 0, False), Piece("a", 4032, 4096, 1, False),
                   Piece("b", 0, 3000, 1, True), Piece("c", 0, 1000, 1, True)]
    assert [x.label for x in got[:2]] == ["a[0:4032]", "a[4032:4096]"]
    four = split({"a": 1000, "b": 64, "c": 500}, 4)  # 391 each
    assert [(x.label, x.replica) for x in four] == [
        ("a[0:384]", 0), ("a[384:768]", 1), ("a[768:1000]", 2), ("b", 2), ("c[0:128]", 2), ("c[128:500]", 3)]
    assert [(x.label, x.replica) for x in split({"x": 3, "y": 0}, 1)] == [("x", 0), ("y", 0)]
    big = split({f"w{i}": 1_000_003 + 7 * i for i in range(5)}, 8)
    load = [sum(x.stop - x.start for x in big if x.replica == r) for r in range(8)]
    total = sum(1_000_003 + 7 * i for i in range(5))
    assert sum(load) == total and all(abs(n - total / 8) <= 64 for n in load), load  # each end ±32


def test_a_sharded_state_loads_whole_into_another_split() -> None:
    """Pieces saved by two replicas are put back together, and each loading optimizer takes
    its own part: what one optimizer over the whole parameter would hold."""
    from autopipe.runtime.optim_state import load_optimizer_state, optimizer_state

    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(10, 20))
    whole = torch.optim.Adam([w], lr=0.1)
    w.grad = torch.randn(10, 20)
    whole.step()
    saved = optimizer_state(whole, {"w": w})
    pieces = {}  # what replicas owning w[0:128] and w[128:200] save
    for lo, hi in ((0, 128), (128, 200)):
        view = nn.Parameter(w.detach().view(-1)[lo:hi].clone())
        part = torch.optim.Adam([view], lr=0.1)
        part.load_state_dict({"state": {0: {k: v.reshape(-1)[lo:hi].clone() if v.dim() else v
                                            for k, v in whole.state[w].items()}},
                              "param_groups": part.state_dict()["param_groups"]})
        pieces.update(optimizer_state(part, {f"w[{lo}:{hi}]": view}))
    assert "optim/w[128:200]/exp_avg" in pieces and "optim/w/exp_avg" not in pieces
    again = torch.optim.Adam([nn.Parameter(w.detach().clone())], lr=0.5)
    load_optimizer_state(again, {"w": again.param_groups[0]["params"][0]}, pieces)
    for key, value in whole.state[w].items():
        assert torch.equal(next(iter(again.state.values()))[key], value), key
    assert again.param_groups[0]["lr"] == 0.1 and saved["optim_group/w"]["lr"] == 0.1


def test_an_optimizer_that_mixes_elements_gets_whole_tensors() -> None:
    """Adam steps pieces (views of the parameters, the split's ranges); Adafactor, whose
    factored moments mix a matrix's rows and columns, gets whole tensors, and warns."""
    from types import SimpleNamespace

    from autopipe.runtime.zero import ShardedOptimizer

    params = {"a": nn.Parameter(torch.zeros(64, 64)), "b": nn.Parameter(torch.zeros(64, 32)),
              "c": nn.Parameter(torch.zeros(32))}
    mine = SimpleNamespace(dp=2, replica=0, position=0, grid=[[0, 1]], dp_group=None)
    adam = ShardedOptimizer(mine, params, lambda ps: torch.optim.Adam(ps))  # type: ignore[arg-type]
    assert adam.owned_names == ("a[0:3072]",)  # (4,096 + 2,048 + 32) / 2 = 3,088, rounded to 64
    view = adam.named_pieces()["a[0:3072]"]
    assert view.data_ptr() == params["a"].data_ptr() and view.shape == (3072,)
    with pytest.warns(UserWarning, match="Adafactor is not an element-wise optimizer"):
        factored = ShardedOptimizer(mine, params, lambda ps: torch.optim.Adafactor(ps))  # type: ignore[arg-type]
    assert factored.owned_names == ("a",)  # the largest whole; b and c go to replica 1
    assert factored.named_pieces() == {"a": params["a"]}


def test_owners_are_whole_tensors_balanced_by_bytes() -> None:
    """The largest first, each to the replica owning the fewest bytes (ties: the lower one,
    then the earlier name), the same whatever the call."""
    from autopipe.runtime.zero import owners

    sizes = {"a": 4, "b": 3, "c": 2, "d": 2, "e": 1}
    assert owners(sizes, 2) == {"a": 0, "b": 1, "c": 1, "d": 0, "e": 1}  # 6 and 6 bytes
    assert list(owners(sizes, 2)) == list(sizes)
    assert owners({"x": 1, "y": 1}, 3) == {"x": 0, "y": 1}  # replica 2 owns nothing
    assert owners(sizes, 1) == dict.fromkeys(sizes, 0)
