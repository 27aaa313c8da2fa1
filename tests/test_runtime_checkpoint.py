"""Tests for autopipe/runtime/checkpoint.py and consolidate.py: save, resume, consolidate, crash mid-save.

Each job starts its gloo ranks once (tests/checkpoint_worker.py) and runs every case in
it; the tests then read what the ranks saved and the checkpoints they wrote.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.distributed.checkpoint.filesystem import FileSystemReader
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load

from autopipe._jsonio import write_json_atomic
from autopipe.cli.main import main
from autopipe.errors import CheckpointError
from autopipe.runtime import consolidate, find_checkpoint, launch

from .conftest import ROOT
from .runtime_cases import CASES, Case

pytestmark = pytest.mark.distributed

ENV = {"PYTHONPATH": str(ROOT), "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": "1"}
JOBS = {2: ["gpt2-2-1f1b", "unet-2-1f1b"], 4: ["gpt2-4-1f1b", "unet-4-1f1b"]}
CRASHED = "gpt2-2-1f1b"


def _run_job(out: Path, ranks: int, names: list[str], env: dict[str, str] | None = None) -> int:
    for name in names:
        CASES[name].build()[2].save(out / f"{name}.plan.json")
    log = out / "log.txt"
    with open(log, "w") as f:
        result = launch([sys.executable, "-m", "tests.checkpoint_worker", str(out), *names], ranks,
                        env={**ENV, **(env or {})}, timeout_s=500, grace_s=20, stdout=f,
                        stderr=subprocess.STDOUT, log=f)
    if env is None:
        assert result.code == 0, log.read_text()[-3000:]
    return result.codes[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ckpt2")
    _run_job(out, 2, JOBS[2])
    return out


@pytest.fixture(scope="module")
def four_ranks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ckpt4")
    _run_job(out, 4, JOBS[4])
    return out


def _results(out: Path, name: str) -> list[dict[str, Any]]:
    return [torch.load(f, weights_only=False) for f in sorted(out.glob(f"{name}.rank*.pt"))]


def _check_resume_and_consolidate(out: Path, name: str) -> None:
    results = _results(out, name)
    last = [r for r in results if r["straight"]]
    assert len(last) == 1, "exactly one rank (the last stage's) reports losses"
    straight, resumed = last[0]["straight"], last[0]["resumed"]
    assert len(straight) == 4 and last[0]["start"] == 2 and len(resumed) == 2
    # the steps after resuming are the steps of training straight through, to the bit
    assert resumed == straight[2:], (straight, resumed)
    assert all(r["loaded_step"] == 4 for r in results)

    state, info = consolidate(out / f"{name}.ckpt")
    assert info.step == 4 and info.path.name == "step-000004"
    spec = CASES[name].spec()
    model = spec.model
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(state, strict=True)  # every key of the original module, nothing else
    assert list(state) == list(initial)
    trained: dict[str, torch.Tensor] = {}
    for r in results:
        trained.update(r["state"])
    for key, value in model.state_dict().items():
        if key in trained:  # (tied aliases are checked through their first name)
            torch.testing.assert_close(value, trained[key], rtol=0, atol=0, msg=lambda m, k=key: f"{k}: {m}")
    assert sum(not torch.equal(initial[k], v) for k, v in model.state_dict().items()) > len(initial) // 2
    # the unsplit model with the consolidated weights computes what the pipeline computes
    inputs, target = spec.batch(CASES[name].microbatches, 4)
    with torch.no_grad():
        output = model(*inputs)
    pipeline_output = next(r["output"] for r in results if r["output"] is not None)
    torch.testing.assert_close(getattr(output, "logits", output), pipeline_output)
    chunks = [torch.tensor_split(x, CASES[name].microbatches) for x in (*inputs, target)]
    with torch.no_grad():
        losses = [spec.loss_fn(model(*c[:-1]), c[-1]).item() for c in zip(*chunks)]
    eval_losses = next(r["eval_losses"] for r in results if r["eval_losses"])
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(eval_losses))


@pytest.mark.parametrize("name", JOBS[2])
def test_two_ranks_resume_equals_straight_through(name: str, two_ranks: Path) -> None:
    _check_resume_and_consolidate(two_ranks, name)


@pytest.mark.slow
@pytest.mark.parametrize("name", JOBS[4])
def test_four_ranks_resume_equals_straight_through(name: str, four_ranks: Path) -> None:
    _check_resume_and_consolidate(four_ranks, name)


def test_keeps_the_two_newest_and_points_at_the_newest(two_ranks: Path) -> None:
    ckpt = two_ranks / f"{CRASHED}.ckpt"
    assert sorted(p.name for p in ckpt.iterdir()) == ["latest", "step-000002", "step-000004"]
    assert (ckpt / "latest").read_text() == "step-000004\n"


def _entries(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor a checkpoint folder holds (model, optimizer state, random state)."""
    saved = FileSystemReader(path).read_metadata().state_dict_metadata
    state = {k: torch.empty(tuple(m.size), dtype=m.properties.dtype) for k, m in saved.items()
             if isinstance(m, TensorStorageMetadata)}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        dcp_load(state, storage_reader=FileSystemReader(path), no_dist=True)
    return state


def test_a_rank_killed_mid_save_leaves_the_previous_checkpoint(tmp_path: Path, two_ranks: Path) -> None:
    """Rank 1 dies while saving step 4 (its tensors written, the checkpoint not complete)."""
    code = _run_job(tmp_path, 2, [CRASHED], env={"CRASH_IN_SAVE": "1:4"})
    log = (tmp_path / "log.txt").read_text()
    assert code == 13, log[-3000:]
    assert "rank 0 (stage 0) lost a peer rank" in log and "while saving" in log  # not a hang
    ckpt = tmp_path / f"{CRASHED}.ckpt"
    assert (ckpt / ".step-000004.partial").is_dir()  # what the dead save left, unused
    assert not (ckpt / "step-000004").exists()
    assert (ckpt / "latest").read_text() == "step-000002\n"
    assert find_checkpoint(ckpt) == ckpt / "step-000002"
    # loadable, and the very checkpoint an undisturbed run saved at step 2
    state, info = consolidate(ckpt)
    assert info.step == 2
    CASES[CRASHED].spec().model.load_state_dict(state, strict=True)
    got, expected = _entries(ckpt / "step-000002"), _entries(two_ranks / f"{CRASHED}.ckpt" / "step-000002")
    assert sorted(got) == sorted(expected) and any(k.startswith("optim/") for k in got)
    for k in expected:
        assert torch.equal(got[k], expected[k]), k


# --- the command line ---------------------------------------------------------------------------

MLP = Case("mlp", 2)
MLP_ARGS = ["--spec-arg=in_dim=16", "--spec-arg=hidden=32", "--spec-arg=layers=4", "--device=cpu",
            "--batch-size=16", "--optimizer=adam", "--lr=0.01"]


def _autopipe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "autopipe", *args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env={**os.environ, **ENV})


def _losses(stdout: str) -> dict[int, float]:
    return {int(ln.split()[1].split("/")[0]): float(ln.split()[3])
            for ln in stdout.splitlines() if ln.startswith("step ")}


def test_cli_save_resume_consolidate(tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    MLP.build()[2].save(plan)
    ckpt = tmp_path / "ckpt"
    train = ["train", "examples/mlp.py:build", *MLP_ARGS, "--plan", str(plan), "--launch", "2"]
    out = _autopipe(*train, "--steps", "5", "--save", str(ckpt), "--save-every", "2")
    assert out.returncode == 0, out.stderr
    assert "saved checkpoint" in out.stdout and (ckpt / "latest").read_text() == "step-000005\n"
    straight = _losses(out.stdout)
    # the checkpoints of steps 4 and 5 are kept; continue from 4 (a checkpoint folder names itself)
    out = _autopipe(*train, "--steps", "6", "--resume", str(ckpt / "step-000004"))
    assert out.returncode == 0, out.stderr
    assert f"resumed from {ckpt / 'step-000004'} after step 4" in out.stdout
    resumed = _losses(out.stdout)
    assert sorted(resumed) == [5, 6] and resumed[5] == straight[5]

    target = tmp_path / "mlp.safetensors"
    out = _autopipe("consolidate", str(ckpt), "-o", str(target))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"wrote {target}: ") and "(step 5, saved by 2 ranks)" in out.stdout
    from safetensors.torch import load_file

    MLP.spec().model.load_state_dict(load_file(target), strict=True)


def test_cli_bad_checkpoint_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each stops with exit code 2 and one line naming the problem, before any rank starts."""
    plan = tmp_path / "plan.json"
    MLP.build(hand=True)[2].save(plan)
    train = ["train", str(ROOT / "examples" / "mlp.py") + ":build", *MLP_ARGS, "--plan", str(plan),
             "--steps", "2", "--launch", "2"]
    (tmp_path / "half" / ".step-000004.partial").mkdir(parents=True)
    cases = [
        ([*train, "--save-every", "2"], "--save-every needs --save DIR"),
        ([*train, "--save", str(tmp_path / "c"), "--save-every", "0"], "--save-every is 0"),
        ([*train, "--resume", str(tmp_path / "nowhere")], "no such checkpoint directory"),
        ([*train, "--resume", str(tmp_path / "half")],
         "holds no complete checkpoint (only the unfinished .step-000004.partial)"),
        (["consolidate", str(tmp_path / "nowhere"), "-o", str(tmp_path / "m.safetensors")],
         "no such checkpoint directory"),
        (["consolidate", str(tmp_path), "-o", str(tmp_path / "m.txt")], "unknown format .txt"),
    ]
    for name, step, extra, message in (
            ("done", 4, {"optimizer": "adam"}, "has done 4 steps already, --steps is 2"),
            ("sgd", 1, {"optimizer": "sgd"}, "was trained with --optimizer sgd, not adam"),
            ("seed", 1, {"optimizer": "adam", "seed": 7}, "was trained with --seed 7, not 0")):
        folder = tmp_path / name / "step-000004"
        folder.mkdir(parents=True)
        (folder / ".metadata").write_bytes(b"")
        write_json_atomic(folder / "autopipe.json", {
            "schema": "autopipe.checkpoint/1", "step": step, "world_size": 2, "graph_fingerprint": "",
            "state_keys": [], "tied": [], "extra": extra})
        # the folder itself: of a directory, its empty .metadata is a damaged newest checkpoint
        cases.append(([*train, "--resume", str(folder)], message))
    for args, message in cases:
        code = main(args)
        out = capsys.readouterr()
        assert code == 2 and message in out.err, (args, out.err)
        assert "hint:" in out.err and "Traceback" not in out.err and "step 1" not in out.out


def test_find_checkpoint_without_latest(tmp_path: Path) -> None:
    """A save killed between the rename and the pointer: the highest complete step counts."""
    for name in ("step-000002", "step-000010", ".step-000012.partial"):
        (tmp_path / name).mkdir()
        (tmp_path / name / ".metadata").write_bytes(b"")
        (tmp_path / name / "autopipe.json").write_text("{}")
    (tmp_path / "step-000011").mkdir()  # no .metadata: incomplete
    assert find_checkpoint(tmp_path) == tmp_path / "step-000010"
    # [Note: a stale latest]: a pointer behind a newer complete checkpoint took the older one
    (tmp_path / "latest").write_text("step-000002\n")
    notes: list[str] = []
    assert find_checkpoint(tmp_path, notes.append) == tmp_path / "step-000010"
    assert notes == [f"{tmp_path / 'latest'} names step-000002, but step-000010 is newer and complete (a save "
                     "stopped before it moved latest); taking step-000010"]
    with pytest.raises(CheckpointError, match="malformed|schema"):
        consolidate(tmp_path)
