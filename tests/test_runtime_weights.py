"""Tests for autopipe/runtime/weights.py: reading state dicts tensor by tensor, and checking they fit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from autopipe.errors import WeightsError
from autopipe.runtime.weights import INDEX, TORCH_INDEX, TensorInfo, casts, check_fit, open_weights

STATE = {
    "emb.weight": torch.randn(10, 4),
    "mid.weight": torch.randn(4, 4),
    "mid.bias": torch.randn(4),
    "norm.steps": torch.tensor([3, 1], dtype=torch.int64),
    "head.weight": torch.randn(10, 4).to(torch.bfloat16),
}
EXPECTED = {k: TensorInfo(tuple(v.shape), v.dtype) for k, v in STATE.items()}


def _check_reads(path: Path, state: dict[str, torch.Tensor] = STATE) -> None:
    with open_weights(path) as w:
        assert w.info == {k: TensorInfo(tuple(v.shape), v.dtype) for k, v in state.items()}
        for k, v in state.items():
            assert torch.equal(w.read(k), v)


def test_safetensors_file(tmp_path: Path) -> None:
    save_file(STATE, tmp_path / "w.safetensors")
    _check_reads(tmp_path / "w.safetensors")


def test_safetensors_tensors_are_read_not_mapped(tmp_path: Path) -> None:
    """[Note: weights read, not mapped]: each tensor is the reader's own, and no page of the
    file is mapped into the process (where ``/proc/self/maps`` tells)."""
    path = tmp_path / "w.safetensors"
    save_file(STATE, path)
    maps = Path("/proc/self/maps")
    with open_weights(path) as w:
        tensors = {k: w.read(k) for k in STATE}
        assert all(w.owns(k) for k in STATE)
        if maps.exists():
            assert str(path) not in maps.read_text()
    assert all(torch.equal(tensors[k], v) for k, v in STATE.items())
    with open_weights(STATE) as w:
        assert not w.owns("mid.weight")
    torch.save(STATE, tmp_path / "w.pt")
    with open_weights(tmp_path / "w.pt") as w:
        assert not w.owns("mid.weight")  # a view of the torch file's mapping


def test_torch_file_plain_and_nested(tmp_path: Path) -> None:
    torch.save(STATE, tmp_path / "w.pt")
    _check_reads(tmp_path / "w.pt")
    torch.save({"state_dict": STATE, "step": 3}, tmp_path / "nested.pth")
    _check_reads(tmp_path / "nested.pth")


def test_hugging_face_folder_with_sharded_index(tmp_path: Path) -> None:
    save_file({k: STATE[k] for k in ("emb.weight", "mid.bias")}, tmp_path / "model-00001-of-00002.safetensors")
    save_file({k: STATE[k] for k in ("mid.weight", "norm.steps", "head.weight")},
              tmp_path / "model-00002-of-00002.safetensors")
    index = {"metadata": {"total_size": 0}, "weight_map": {
        k: "model-00001-of-00002.safetensors" if k in ("emb.weight", "mid.bias")
        else "model-00002-of-00002.safetensors" for k in STATE}}
    (tmp_path / INDEX).write_text(json.dumps(index))
    _check_reads(tmp_path)


def test_hugging_face_folder_of_torch_shards(tmp_path: Path) -> None:
    """A folder saved before safetensors: ``pytorch_model.bin.index.json`` and torch shards,
    or one ``pytorch_model.bin``; safetensors win where a folder holds both."""
    first = ("emb.weight", "mid.bias")
    torch.save({k: STATE[k] for k in first}, tmp_path / "pytorch_model-00001-of-00002.bin")
    torch.save({k: v for k, v in STATE.items() if k not in first}, tmp_path / "pytorch_model-00002-of-00002.bin")
    index = {"weight_map": {k: f"pytorch_model-0000{1 if k in first else 2}-of-00002.bin" for k in STATE}}
    (tmp_path / TORCH_INDEX).write_text(json.dumps(index))
    _check_reads(tmp_path)
    index["weight_map"]["mid.bias"] = "pytorch_model-00002-of-00002.bin"
    (tmp_path / TORCH_INDEX).write_text(json.dumps(index))
    with pytest.raises(WeightsError, match="does not hold them: mid.bias"):
        open_weights(tmp_path)
    single = tmp_path / "single"
    single.mkdir()
    torch.save(STATE, single / "pytorch_model.bin")
    _check_reads(single)
    save_file({"a": torch.zeros(1)}, single / "model.safetensors")
    with open_weights(single) as w:
        assert list(w.info) == ["a"]


def test_hugging_face_folder_with_one_file(tmp_path: Path) -> None:
    save_file(STATE, tmp_path / "model.safetensors")
    _check_reads(tmp_path)


def test_check_fit_reads_a_tied_tensor_under_either_name(tmp_path: Path) -> None:
    tied = {**EXPECTED, "head.weight": EXPECTED["emb.weight"]}
    saved = {k: v for k, v in STATE.items() if k != "emb.weight"}
    saved["head.weight"] = STATE["emb.weight"]
    save_file(saved, tmp_path / "w.safetensors")
    with open_weights(tmp_path / "w.safetensors") as w:
        reads = check_fit(w, tied, [("emb.weight", "head.weight")])
    assert reads == {"emb.weight": "head.weight", "mid.weight": "mid.weight", "mid.bias": "mid.bias",
                     "norm.steps": "norm.steps"}


@pytest.mark.parametrize(("change", "message"), [
    (lambda s: s.pop("mid.bias"), "1 missing (mid.bias)"),
    (lambda s: s.update(extra=torch.zeros(1)), "1 unexpected (extra)"),
    (lambda s: s.update({"mid.weight": torch.zeros(4, 5)}),
     "mid.weight is [4, 5] float32 in the file but [4, 4] float32 in the model"),
    (lambda s: s.update({"norm.steps": STATE["norm.steps"].int()}),
     "norm.steps is [2] int32 in the file but [2] int64 in the model"),
    (lambda s: s.update({"mid.bias": STATE["mid.bias"].to(torch.bfloat16), "norm.steps": torch.ones(2)}),
     "norm.steps is [2] float32 in the file but [2] int64 in the model"),
], ids=["missing", "unexpected", "shape", "integer dtype", "float for an integer"])
def test_check_fit_names_what_does_not_fit(tmp_path: Path, change: object, message: str) -> None:
    state = dict(STATE)
    change(state)  # type: ignore[operator]
    save_file(state, tmp_path / "w.safetensors")
    with open_weights(tmp_path / "w.safetensors") as w, pytest.raises(WeightsError) as e:
        check_fit(w, EXPECTED)
    assert message in str(e.value) and "do not fit the model" in str(e.value)
    assert e.value.hint


@pytest.mark.parametrize(("file_prefix", "model_prefix", "hint"), [
    ("model.", "", "the file's names are the model's with 'model.' in front"),
    ("", "net.", "the model's names are the file's with 'net.' in front"),
], ids=["file prefixed", "model prefixed"])
def test_names_one_prefix_apart_are_named_in_the_hint(tmp_path: Path, file_prefix: str, model_prefix: str,
                                                     hint: str) -> None:
    """A state dict saved from a wrapper (``{"model." + name: ...}``, a user's own .pt) was
    refused with every name missing and every name unexpected and a hint to save the state
    dict of the same model; the hint now names the prefix."""
    save_file({file_prefix + k: v for k, v in STATE.items()}, tmp_path / "w.safetensors")
    expected = {model_prefix + k: v for k, v in EXPECTED.items()}
    with open_weights(tmp_path / "w.safetensors") as w, pytest.raises(WeightsError) as e:
        check_fit(w, expected)
    assert e.value.hint is not None and e.value.hint.startswith(hint), e.value.hint


def test_a_float_saved_in_another_float_dtype_fits_and_is_named(tmp_path: Path) -> None:
    # the Hub's checkpoints are mostly bfloat16 or float16; a float32 model reads them cast
    state = {k: (v.to(torch.bfloat16) if v.dtype == torch.float32 else v.float()) if v.is_floating_point() else v
             for k, v in STATE.items()}
    save_file(state, tmp_path / "w.safetensors")
    with open_weights(tmp_path / "w.safetensors") as w:
        read = check_fit(w, EXPECTED)
        assert casts(w, EXPECTED, read) == ("3 tensors from bfloat16 to float32, 1 tensor from float32 to bfloat16")
    save_file(STATE, tmp_path / "same.safetensors")
    with open_weights(tmp_path / "same.safetensors") as w:
        assert casts(w, EXPECTED, check_fit(w, EXPECTED)) is None


def test_many_missing_names_are_counted_not_all_listed(tmp_path: Path) -> None:
    save_file({"emb.weight": STATE["emb.weight"]}, tmp_path / "w.safetensors")
    expected = {**EXPECTED, **{f"layer.{i}.weight": TensorInfo((2,), torch.float32) for i in range(20)}}
    with open_weights(tmp_path / "w.safetensors") as w, pytest.raises(WeightsError) as e:
        check_fit(w, expected)
    assert "24 missing (mid.weight, mid.bias, norm.steps, head.weight, layer.0.weight, … and 19 more)" \
        in str(e.value)


def test_bad_paths_and_files(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="no such file or folder"):
        open_weights(tmp_path / "nope.safetensors")
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(WeightsError, match="unknown format '.npz'"):
        open_weights(tmp_path / "w.npz")
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        open_weights(tmp_path / "bad.safetensors")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(WeightsError, match="not a state dict of tensors"):
        open_weights(tmp_path / "list.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match=f"holds none of {INDEX}"):
        open_weights(tmp_path / "empty")


def test_a_checkpoint_directory_as_weights_names_resume_and_consolidate(tmp_path: Path) -> None:
    """`--init ckpt` (what --save wrote) was "holds none of model.safetensors.index.json, ...;
    save the model with save_pretrained" until 2026-12-07: now it says what the folder is."""
    ckpt = tmp_path / "ckpt"
    (ckpt / "step-000002").mkdir(parents=True)
    (ckpt / "step-000002" / "autopipe.json").write_text("{}")
    (ckpt / "latest").write_text("step-000002")
    for given in (ckpt, ckpt / "step-000002"):
        with pytest.raises(WeightsError, match="is a checkpoint directory of `autopipe train --save`") as e:
            open_weights(given)
        assert e.value.hint is not None
        assert f"--resume {given}" in e.value.hint and f"autopipe consolidate {given}" in e.value.hint


def test_index_problems(tmp_path: Path) -> None:
    (tmp_path / INDEX).write_text("{")
    with pytest.raises(WeightsError, match="not a checkpoint index"):
        open_weights(tmp_path)
    (tmp_path / INDEX).write_text(json.dumps({"weight_map": {"a": "gone.safetensors"}}))
    with pytest.raises(WeightsError, match="1 shard"):
        open_weights(tmp_path)
    save_file({"a": torch.zeros(1)}, tmp_path / "one.safetensors")
    (tmp_path / INDEX).write_text(json.dumps({"weight_map": {"a": "one.safetensors",
                                                             "b": "one.safetensors"}}))
    with pytest.raises(WeightsError, match="does not hold them: b"):
        open_weights(tmp_path)


def test_a_state_dict_in_memory() -> None:
    with open_weights(STATE) as w:
        assert w.info == EXPECTED
        assert all(torch.equal(w.read(k), v) for k, v in STATE.items())
        assert check_fit(w, EXPECTED) == {k: k for k in STATE}
    with pytest.raises(WeightsError, match="holds int under 'step'"):
        open_weights({**STATE, "step": 3})  # type: ignore[dict-item]


@pytest.mark.parametrize("keep", [0, 100, 0.5, -10])
def test_a_truncated_torch_file_is_named_as_such(tmp_path: Path, keep: float) -> None:
    """A ``.pt`` cut short (a copy that stopped): the message said "torch.load fails" and
    hinted to "save plain tensors", as if the file held something else."""
    whole = tmp_path / "whole.pt"
    torch.save(STATE, whole)
    data = whole.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[:int(keep * len(data)) if isinstance(keep, float) else keep])
    with pytest.raises(WeightsError, match="is not a whole torch.save file: it is damaged or truncated") as e:
        open_weights(cut)
    assert e.value.hint == "save it again: torch.save(model.state_dict(), path)"
    assert "\n" not in str(e.value)


def test_a_pickled_module_is_named_as_such(tmp_path: Path) -> None:
    """``torch.save(model)`` pickles the module: the message says so on one line, without the
    terminal escapes and the cut-off paragraphs of torch's own (the tester's ``module.pt``)."""
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")
    with pytest.raises(WeightsError) as e:
        open_weights(tmp_path / "module.pt")
    text = f"{e.value} {e.value.hint}"
    assert "holds a pickled object (torch.nn.modules.linear.Linear), not a state dict" in text
    assert "torch.save(model.state_dict(), path)" in str(e.value.hint)
    assert "\x1b" not in text and "\n" not in text
