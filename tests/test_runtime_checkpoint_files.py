"""Tests for the checks of autopipe/runtime/checkpoint.py, consolidate.py and train.py's resume:
damaged files, a checkpoint of another model, steps past 999999, where --save can go, and
what a resumed run notes.

Checkpoints here are saved by a world of one rank in this process (a one-stage plan), so
the checks run without starting ranks; tests/test_runtime_checkpoint.py runs the gloo jobs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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
    launch,
    load_checkpoint,
    save_checkpoint,
)
from autopipe.runtime.checkpoint import _commit, check_save
from autopipe.runtime.optim import TrainConfig
from autopipe.runtime.train import _extra, check_resume, resume_notes

from .conftest import ROOT, example_spec
from .runtime_cases import TINY, Case
from .runtime_plans import plan_from_cuts

MLP = TINY["mlp"]
MLP_FILE = str(ROOT / "examples" / "mlp.py") + ":build"
# the model of MLP, as `autopipe train` builds it (--batch-size 16 = 4 micro-batches of 4)
CLI = ["--spec-arg=in_dim=16", "--spec-arg=hidden=32", "--spec-arg=layers=4", "--device=cpu",
       "--batch-size=16", "--optimizer=adam", "--lr=0.01"]


def _save(directory: Path, steps: tuple[int, ...], **knobs: object) -> None:
    """Checkpoints of ``examples/mlp.py`` after each of ``steps`` (a world of one rank, Adam)."""
    spec = example_spec("mlp", **{**MLP, **knobs})
    plan = plan_from_cuts(trace(spec.model, spec.example_inputs), [], microbatches=4)
    config = TrainConfig(steps=max(steps), lr=0.01, optimizer="adam", device="cpu")
    with build(plan, spec, device="cpu") as pipe:
        optimizer = torch.optim.Adam(pipe.parameters(), lr=0.01)
        for step in range(1, max(steps) + 1):
            pipe.step(*spec.batch(4, step - 1))
            optimizer.step()
            if step in steps:
                save_checkpoint(directory, pipe, optimizer, step=step, extra=_extra(config, plan, spec), keep=9)


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
    # the step folder named itself is refused; resuming the directory takes step 1 (below)
    with pytest.raises(CheckpointError, match=message):
        check_resume(TrainConfig(steps=5, optimizer="adam", lr=0.01, resume=str(ckpt / "step-000002")))
    for pipe in _pipe():
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(ckpt / "step-000002", pipe)
    # the earlier one, named as the hint says, is whole
    state, info = consolidate(ckpt / "step-000001")
    assert info.step == 1 and len(state) == len(example_spec("mlp", **MLP).model.state_dict())


def test_resuming_a_directory_passes_over_a_damaged_or_unfinished_newest(ckpt: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """[Note: resuming past a damaged checkpoint]: the newest whole one, and a note saying why."""
    (ckpt / "step-000002" / "__0_0.distcp").unlink()
    notes: list[str] = []
    info = check_resume(TrainConfig(steps=5, optimizer="adam", lr=0.01, resume=str(ckpt)), note=notes.append)
    assert info.path == ckpt / "step-000001", info
    assert notes == [f"resuming from {ckpt / 'step-000001'}, the newest whole checkpoint in {ckpt}: checkpoint "
                     f"{ckpt / 'step-000002'} is damaged: its file __0_0.distcp is missing (No such file or directory)"]
    for pipe in _pipe():
        with pytest.warns(UserWarning, match=r"resuming from .*step-000001.*step-000002 is damaged"):
            assert load_checkpoint(ckpt, pipe).step == 1
    # an unfinished newest (latest names a folder without autopipe.json) was taken over silently
    shutil.rmtree(ckpt / "step-000002")
    (ckpt / "step-000002").mkdir()
    notes.clear()
    assert check_resume(TrainConfig(steps=5, optimizer="adam", lr=0.01, resume=str(ckpt)),
                        note=notes.append).step == 1
    assert notes and notes[0].endswith(f"{ckpt / 'step-000002'} is unfinished (no autopipe.json)"), notes
    # the CLI (a world of one: the plan's one stage) says so on stderr, and trains on from step 1
    assert _train_one_stage(tmp_path, ckpt, steps=2) == 0
    out = capsys.readouterr()
    assert out.err.startswith(f"note: resuming from {ckpt / 'step-000001'}"), out.err
    assert f"resumed from {ckpt / 'step-000001'} after step 1" in out.out and "step 2/2" in out.out, out.out
    # none whole: the newest's error
    (ckpt / "step-000001" / "__0_0.distcp").unlink()
    with pytest.raises(CheckpointError, match=r"step-000001 is damaged"):
        check_resume(TrainConfig(steps=5, optimizer="adam", lr=0.01, resume=str(ckpt)))


def test_another_optimizers_state_and_a_negative_step_are_refused(saved: Path, tmp_path: Path) -> None:
    """Adam given the checkpoint's Adam state is fine; given SGD's momenta it was torch's
    KeyError 'step'; step=-1 was saved as step--00001, and loaded."""
    momentum = tmp_path / "momentum"
    for pipe in _pipe():
        sgd = torch.optim.SGD(pipe.parameters(), lr=0.1, momentum=0.9)
        pipe.step(*example_spec("mlp", **MLP).batch(4, 0))
        sgd.step()
        save_checkpoint(momentum, pipe, sgd, step=1)
        with pytest.raises(CheckpointError, match=r"optimizer state \(momentum_buffer\) does not fit this Adam"):
            load_checkpoint(momentum, pipe, torch.optim.Adam(pipe.parameters()))
        assert load_checkpoint(momentum, pipe).step == 1  # the model alone
        assert load_checkpoint(saved, pipe, torch.optim.Adam(pipe.parameters())).step == 2
        for step in (-1, 1.5, True):
            with pytest.raises(CheckpointError, match=rf"save_checkpoint\(step={step!r}\)"):
                save_checkpoint(tmp_path / "bad", pipe, step=step)  # type: ignore[arg-type]
    assert not (tmp_path / "bad").exists()


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
            load_checkpoint(ckpt, pipe)  # whole by its lengths: found by DCP, not passed over
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


def test_weights_are_no_checkpoint_and_the_hint_names_init(tmp_path: Path) -> None:
    """`--resume hf-folder` (save_pretrained's) was "holds no complete checkpoint; a save that
    was interrupted leaves no checkpoint", and `--resume w.safetensors` "is a file", until
    2026-12-07: now each says it holds weights, to start from with --init. A checkpoint
    directory that holds a consolidated model.safetensors is still a checkpoint."""
    from safetensors.torch import save_file

    hf = tmp_path / "hf"
    hf.mkdir()
    save_file({"w": torch.zeros(2)}, hf / "model.safetensors")
    for given, kind in ((hf, "a folder of a model's weights"), (hf / "model.safetensors", "a model's weights file")):
        with pytest.raises(CheckpointError, match=f"is {kind}, not a checkpoint") as e:
            find_checkpoint(given)
        assert e.value.hint is not None and f"--init {given}" in e.value.hint
    torch.save({"w": torch.zeros(2)}, tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="is a model's weights file"):
        consolidate(tmp_path / "w.pt")


def test_a_consolidated_file_inside_the_checkpoint_directory(ckpt: Path) -> None:
    """`autopipe consolidate ckpt -o ckpt/model.safetensors` leaves ckpt a checkpoint."""
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, ckpt / "model.safetensors")
    assert find_checkpoint(ckpt) == ckpt / "step-000002"


def test_ranks_stop_on_a_damaged_checkpoint_with_one_line_each(ckpt: Path, tmp_path: Path) -> None:
    """Under torchrun (here: the launcher without --launch), every rank finds it before the
    rendezvous, as a bad --init: no traceback, no rank that lost a peer."""
    (ckpt / "step-000002" / "__0_0.distcp").unlink()
    plan = tmp_path / "plan.json"
    Case("mlp", 2).build(hand=True)[2].save(plan)
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        result = launch([sys.executable, "-m", "autopipe", "train", MLP_FILE, *CLI, "--plan", str(plan),
                         "--steps", "4", "--resume", str(ckpt / "step-000002")], 2,
                        env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}, timeout_s=240, grace_s=30,
                        stdout=f, stderr=subprocess.STDOUT, log=f)
    text = log.read_text()
    assert result.codes == (2, 2), text
    assert text.count("is damaged: its file __0_0.distcp is missing") == 2, text
    assert "Traceback" not in text and "lost a peer" not in text and "training" not in text, text


# --- a checkpoint of another model ---------------------------------------------------------------


@pytest.mark.parametrize(("knobs", "message"), [
    ({"layers": 5}, r"missing 2: blocks\.4\.0\.bias, blocks\.4\.0\.weight"),
    ({"layers": 3}, r"not in the model 2: blocks\.3\.0\.bias, blocks\.3\.0\.weight"),
    ({"hidden": 48}, r"other shapes 11: inp\.weight \(checkpoint \(32, 16\), model \(48, 16\)\)"),
])
def test_check_resume_names_the_keys_of_another_model(saved: Path, knobs: dict[str, int], message: str) -> None:
    model = example_spec("mlp", **{**MLP, **knobs}).model
    config = TrainConfig(steps=5, optimizer="adam", lr=0.01, resume=str(saved))
    with pytest.raises(CheckpointError, match=rf"checkpoint .*step-000002 does not fit the model: {message}"):
        check_resume(config, model)
    assert check_resume(config, example_spec("mlp", **MLP).model).step == 2


def test_check_resume_takes_a_tied_model_on_meta(tmp_path: Path) -> None:
    """GPT-2's head is tied to the embedding: autopipe.json lists both names, DCP holds one."""
    knobs = dict(n_layer=1, n_embd=16, n_head=2, vocab_size=64, seq_len=8, batch_size=2)
    spec = example_spec("gpt2", **knobs)
    plan = plan_from_cuts(trace(spec.model, spec.example_inputs), [], microbatches=2)
    with build(plan, spec, device="cpu") as pipe:
        save_checkpoint(tmp_path, pipe, step=1)
    config = TrainConfig(steps=2, resume=str(tmp_path))
    assert check_resume(config, example_spec("gpt2", **knobs, device="meta").model).step == 1
    with pytest.raises(CheckpointError, match=r"other shapes 16: transformer\.wte\.weight \(checkpoint \(64, 16\), "
                                              r"model \(64, 32\)\)"):
        check_resume(config, example_spec("gpt2", **{**knobs, "n_embd": 32}, device="meta").model)


def test_a_stale_latest_resumes_the_newest_whole_checkpoint(ckpt: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """[Note: a stale latest]: killed after step 2's rename, before `latest` moved on from step 1."""
    (ckpt / "latest").write_text("step-000001\n")
    notes: list[str] = []
    info = check_resume(TrainConfig(steps=5, optimizer="adam", lr=0.01, resume=str(ckpt)), note=notes.append)
    assert info.path == ckpt / "step-000002" and info.step == 2, info  # was step-000001: step 2 trained again
    assert len(notes) == 1 and "names step-000001, but step-000002 is newer" in notes[0], notes
    for pipe in _pipe():
        with pytest.warns(UserWarning, match="names step-000001, but step-000002 is newer"):
            assert load_checkpoint(ckpt, pipe).step == 2
    assert consolidate(ckpt)[1].step == 2
    # the CLI says so on stderr and trains on from step 2
    assert _train_one_stage(tmp_path, ckpt, steps=3) == 0
    out = capsys.readouterr()
    assert out.err.startswith(f"note: {ckpt / 'latest'} names step-000001, but step-000002"), out.err
    assert f"resumed from {ckpt / 'step-000002'} after step 2" in out.out and "step 3/3" in out.out, out.out
    assert main(["consolidate", str(ckpt), "-o", str(tmp_path / "m.pt")]) == 0
    out = capsys.readouterr()
    assert "names step-000001, but step-000002 is newer" in out.err and "(step 2," in out.out, out
    # the newer one damaged as well: one note, for the one passed over (not "taking step-000002")
    (ckpt / "step-000002" / "__0_0.distcp").unlink()
    notes.clear()
    assert check_resume(TrainConfig(steps=5, optimizer="adam", lr=0.01, resume=str(ckpt)),
                        note=notes.append).step == 1
    assert len(notes) == 1 and notes[0].startswith(f"resuming from {ckpt / 'step-000001'}"), notes


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


# --- --save, --resume and consolidate arguments -------------------------------------------------


def test_check_save_refuses_what_cannot_hold_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "afile").write_text("")
    with pytest.raises(CheckpointError, match=r"afile: it is a file, not a directory"):
        check_save(tmp_path / "afile")
    with pytest.raises(CheckpointError, match=r"afile/ck: .*afile is a file"):
        check_save(tmp_path / "afile" / "ck")
    check_save(tmp_path / "new" / "ck")  # made at the first save
    (tmp_path / "old" / "step-000001").mkdir(parents=True)
    for name in (".metadata", "autopipe.json"):
        (tmp_path / "old" / "step-000001" / name).write_text("")
    with pytest.raises(CheckpointError, match=r"old: it holds another run's, up to step-000001") as e:
        check_save(tmp_path / "old", resuming=False)
    assert e.value.hint is not None and e.value.hint.startswith(f"pass --resume {tmp_path / 'old'} to continue")
    check_save(tmp_path / "old")  # resuming: its own checkpoints
    check_save(tmp_path / "old", from_step=1)
    # [Note: a stale latest]: resuming ckpt/step-000001 and saving step 2 beside a step 3 left
    # `latest` at step 2, and `--resume old` took step 3, of the run this one replaced
    (tmp_path / "old" / "step-000003").mkdir()
    for name in (".metadata", "autopipe.json"):
        (tmp_path / "old" / "step-000003" / name).write_text("")
    with pytest.raises(CheckpointError, match=r"old: it holds step-000003, beyond step 1 that this run resumes "
                                              r"from, and resuming .*old takes the highest step") as e:
        check_save(tmp_path / "old", from_step=1)
    assert e.value.hint == f"save into another directory, or remove step-000003 from {tmp_path / 'old'} first"
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path)
    with pytest.raises(CheckpointError, match=rf"{tmp_path} is not writable"):
        check_save(tmp_path / "new" / "ck")


def test_cli_bad_arguments_before_any_rank(saved: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Each stops with exit code 2 and one line naming the problem, before any rank starts."""
    plan = tmp_path / "plan.json"
    Case("mlp", 2).build(hand=True)[2].save(plan)
    other = tmp_path / "other"
    _save(other, (1,), layers=5)
    (tmp_path / "afile").write_text("")
    (tmp_path / "notckpt").mkdir()
    train = ["train", MLP_FILE, *CLI, "--plan", str(plan), "--steps", "4", "--launch", "2"]
    cases = [
        ([*train, "--save", str(tmp_path / "afile")], "it is a file, not a directory", None),
        ([*train, "--save", str(tmp_path / "afile" / "ck")], "afile is a file", None),
        # a run from step 0 saving among another run's checkpoints: its first save took `latest`, and
        # keeping the two newest removed the other run's older one
        ([*train, "--save", str(saved)], "it holds another run's, up to step-000002, and this run starts from step 0",
         None),
        ([*train, "--resume", str(tmp_path / "afile")], "afile is a file, not a checkpoint directory", None),
        ([*train, "--resume", str(saved / "step-000001"), "--save", str(saved)],
         "it holds step-000002, beyond step 1 that this run resumes from", None),
        ([*train, "--resume", str(other)], "does not fit the model: not in the model 2: blocks.4.0.bias", None),
        (["consolidate", str(tmp_path / "notckpt"), "-o", str(tmp_path / "m.pt")], "holds no complete checkpoint",
         "--resume"),
    ]
    for args, message, absent in cases:
        code = main(args)
        out = capsys.readouterr()
        assert code == 2 and message in out.err, (args, out.err)
        assert "hint:" in out.err and "Traceback" not in out.err and "training" not in out.out, out
        assert absent is None or absent not in out.err, out.err


# --- what a resumed run notes --------------------------------------------------------------------


def test_resume_notes_name_what_differs_from_the_checkpoint(saved: Path) -> None:
    spec = example_spec("mlp", **MLP)
    graph = trace(spec.model, spec.example_inputs)
    info = check_resume(TrainConfig(steps=5, optimizer="adam", lr=0.01, resume=str(saved)))
    assert info.extra["data"] == {"microbatches": 4, "replicas": 1, "microbatch_size": 4,
                                  "next_batch": "spec.batch(microbatches * replicas, step)"}
    same = TrainConfig(steps=5, optimizer="adam", lr=0.01, resume=str(saved))
    assert resume_notes(info, same, plan_from_cuts(graph, [], microbatches=4), spec) == []
    other = TrainConfig(steps=5, optimizer="adam", lr=0.5, resume=str(saved), init="w.safetensors")
    halves = example_spec("mlp", **{**MLP, "batch_size": 2})
    notes = resume_notes(info, other, plan_from_cuts(graph, [], microbatches=8), halves)
    assert notes == [
        f"note: --init w.safetensors is not read: the weights come from checkpoint {info.path}",
        f"note: this run differs from checkpoint {info.path}: --lr 0.5 (it had 0.01); 8 micro-batches of 2 "
        "a step (it had 4 micro-batches of 4: the data may differ from a run straight through)"]


def _train_one_stage(tmp_path: Path, ckpt: Path, *, steps: int) -> int:
    """``autopipe train`` of the MLP as one stage (a world of one), resuming ``ckpt``."""
    plan = tmp_path / "plan.json"
    spec = example_spec("mlp", **MLP)
    plan_from_cuts(trace(spec.model, spec.example_inputs), [], microbatches=4).save(plan)
    return main(["train", MLP_FILE, *CLI, "--plan", str(plan), "--steps", str(steps), "--resume", str(ckpt)])
