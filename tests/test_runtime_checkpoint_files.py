"""Tests for the checks of autopipe/runtime/checkpoint.py and consolidate.py: damaged files,
paths that are no checkpoint, steps past 999999.

Checkpoints here are saved by a world of one rank in this process (a one-stage plan), so
the checks run without starting ranks; tests/test_runtime_checkpoint.py runs the gloo jobs.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from autopipe import trace
from autopipe.cli.main import main
from autopipe.errors import CheckpointError
from autopipe.runtime import (
    Pipe,
    build,
    consolidate,
    find_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from autopipe.runtime.checkpoint import _commit

from .conftest import example_spec
from .runtime_cases import TINY
from .runtime_plans import plan_from_cuts

MLP = TINY["mlp"]


def _save(directory: Path, steps: tuple[int, ...], **knobs: object) -> None:
    """Checkpoints of ``examples/mlp.py`` after each of ``steps`` (a world of one rank, Adam)."""
    spec = example_spec("mlp", **{**MLP, **knobs})
    plan = plan_from_cuts(trace(spec.model, spec.example_inputs), [], microbatches=4)
    with build(plan, spec, device="cpu") as pipe:
        optimizer = torch.optim.Adam(pipe.parameters(), lr=0.01)
        for step in range(1, max(steps) + 1):
            pipe.step(*spec.batch(4, step - 1))
            optimizer.step()
            if step in steps:
                save_checkpoint(directory, pipe, optimizer, step=step, extra={"optimizer": "adam", "lr": 0.01},
                                keep=9)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``ckpt/step-000001`` and ``ckpt/step-000002`` of the MLP (copied by each test that harms them)."""
    out = tmp_path_factory.mktemp("saved")
    _save(out / "ckpt", (1, 2))
    return out / "ckpt"


@pytest.fixture
def ckpt(saved: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(saved, tmp_path / "ckpt"))


def _pipe() -> Iterator[Pipe]:
    spec = example_spec("mlp", **MLP)
    plan = plan_from_cuts(trace(spec.model, spec.example_inputs), [], microbatches=4)
    with build(plan, spec, device="cpu") as pipe:
        yield pipe


# --- a damaged checkpoint ------------------------------------------------------------------------


def test_a_missing_data_file_is_named_with_an_earlier_checkpoint(ckpt: Path) -> None:
    (ckpt / "step-000002" / "__0_0.distcp").unlink()
    message = r"checkpoint .*step-000002 is damaged: its file __0_0.distcp is missing"
    with pytest.raises(CheckpointError, match=message) as e:
        consolidate(ckpt)
    assert e.value.hint is not None and str(ckpt / "step-000001") in e.value.hint
    for pipe in _pipe():
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(ckpt, pipe)
    # the earlier one, named as the hint says, is whole
    state, info = consolidate(ckpt / "step-000001")
    assert info.step == 1 and len(state) == len(example_spec("mlp", **MLP).model.state_dict())


def test_a_short_or_garbled_data_file_is_named(ckpt: Path) -> None:
    data = ckpt / "step-000002" / "__0_0.distcp"
    size = data.stat().st_size
    os.truncate(data, 100)
    with pytest.raises(CheckpointError, match=rf"its file __0_0.distcp holds 100 bytes, its .metadata names {size}"):
        consolidate(ckpt)
    data.write_bytes(b"\0" * size)  # the right length, nothing DCP can read
    with pytest.raises(CheckpointError, match=r"step-000002 is damaged: DCP cannot read it \(.*Error"):
        consolidate(ckpt)
    for pipe in _pipe():  # DCP's CheckpointException is a BaseException: it escaped as a traceback
        with pytest.raises(CheckpointError, match="DCP cannot read it"):
            load_checkpoint(ckpt, pipe)
    (ckpt / "step-000002" / ".metadata").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match=r"its .metadata cannot be read"):
        consolidate(ckpt)


def test_cli_consolidate_of_a_damaged_checkpoint(ckpt: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    (ckpt / "step-000002" / "__0_0.distcp").unlink()
    code = main(["consolidate", str(ckpt), "-o", str(tmp_path / "m.safetensors")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert err.splitlines()[0].endswith("step-000002 is damaged: its file __0_0.distcp is missing "
                                        "(No such file or directory)")
    assert f"hint: use an earlier checkpoint: pass its step folder, e.g. {ckpt / 'step-000001'}" in err


def test_a_file_or_an_empty_folder_is_no_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    with pytest.raises(CheckpointError, match=r"afile is a file, not a checkpoint directory"):
        find_checkpoint(tmp_path / "afile")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"empty holds no complete checkpoint") as e:
        consolidate(tmp_path / "empty")
    assert e.value.hint is not None and "--resume" not in e.value.hint  # consolidate has none


# --- steps past 999999 ---------------------------------------------------------------------------


def _fake(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / ".metadata").write_bytes(b"")
    (folder / "autopipe.json").write_text("{}")
    return folder


def test_steps_past_999999_sort_as_numbers(tmp_path: Path) -> None:
    for step in (999999, 1000000):
        _fake(tmp_path / f"step-{step:06d}")
    assert find_checkpoint(tmp_path) == tmp_path / "step-1000000"  # no `latest`: the highest step
    # saving step 1000002 keeps the two newest, 1000000 and 1000002 (not 999999)
    partial = _fake(tmp_path / ".step-1000002.partial")
    _commit(tmp_path, partial, tmp_path / "step-1000002", keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-1000000", "step-1000002"]
