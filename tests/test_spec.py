"""Tests for autopipe/spec.py: ModelSpec and load_spec."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import autopipe
from autopipe.errors import SpecError
from autopipe.spec import ModelSpec, parse_spec_args

from .conftest import ROOT


def test_load_spec_from_file() -> None:
    spec = autopipe.load_spec(f"{ROOT}/examples/mlp.py:build", layers=2)
    assert isinstance(spec, ModelSpec)
    assert spec.name == "mlp"
    assert len(spec.model.blocks) == 2


def test_load_spec_from_module() -> None:
    spec = autopipe.load_spec("examples.mlp:build", layers=3)
    assert len(spec.model.blocks) == 3


def test_batch_is_deterministic_and_stacks_microbatches() -> None:
    spec = autopipe.load_spec("examples.mlp:build", batch_size=4)
    (x1,), y1 = spec.batch(3, step=2)
    (x2,), y2 = spec.batch(3, step=2)
    (x3,), _ = spec.batch(3, step=3)
    assert x1.shape[0] == 12 and y1.shape[0] == 12
    torch.testing.assert_close(x1, x2)
    torch.testing.assert_close(y1, y2)
    assert not torch.equal(x1, x3)


@pytest.mark.parametrize("text, fragment", [
    ("examples/mlp.py", "no ':function'"),
    ("does/not/exist.py:build", "does not exist"),
    ("examples/mlp.py:nothing", "no function 'nothing'"),
    ("no_such_module_xyz:build", "cannot import module"),
])
def test_bad_spec_strings(text: str, fragment: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    with pytest.raises(SpecError, match=fragment) as info:
        autopipe.load_spec(text)
    assert info.value.hint


def test_function_returning_wrong_type(tmp_path: Path) -> None:
    f = tmp_path / "bad.py"
    f.write_text("def build():\n    return 42\n")
    with pytest.raises(SpecError, match="returned int, expected autopipe.ModelSpec"):
        autopipe.load_spec(f"{f}:build")


def test_bad_knob(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="failed"):
        autopipe.load_spec("examples.mlp:build", no_such_knob=1)


def test_modelspec_validates_fields() -> None:
    with pytest.raises(SpecError, match="must be a tuple"):
        ModelSpec(model=torch.nn.Linear(2, 2), example_inputs=torch.zeros(2),  # type: ignore[arg-type]
                  loss_fn=lambda o, t: o.sum(), batch=lambda n: ((), torch.zeros(1)))
    with pytest.raises(SpecError, match="torch.nn.Module"):
        ModelSpec(model="nope", example_inputs=(), loss_fn=len, batch=len)  # type: ignore[arg-type]


def test_parse_spec_args() -> None:
    assert parse_spec_args(["n=3", "name=x", "t=(1, 2)"]) == {"n": 3, "name": "x", "t": (1, 2)}
    with pytest.raises(SpecError):
        parse_spec_args(["oops"])
