"""Tests for `autopipe plan --device-spec` building SPEC on the meta device
([Note: building for an estimate] in ``autopipe.spec``): the same plan, no weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import autopipe.cli.plan_cmd as plan_cmd
import autopipe.spec as spec_module
from autopipe.cli.main import main
from tests.conftest import ROOT

LOAD = spec_module.load_spec


def _plan(args: list[str], out: Path, monkeypatch: pytest.MonkeyPatch,
          capsys: pytest.CaptureFixture[str], costs: tuple[str, ...] = ("--device-spec", "h100"),
          ) -> tuple[str, list[str], str]:
    """Run `autopipe plan` with ``costs``; the plan's bytes, the ``device`` knob of each
    build (``-``: none given), stderr."""
    devices: list[str] = []

    def load(where: str, **kwargs: Any) -> Any:
        devices.append(kwargs.get("device", "-"))
        return LOAD(where, **kwargs)

    monkeypatch.setattr(spec_module, "load_spec", load)
    monkeypatch.setattr(plan_cmd, "load_spec", load)
    code = main(["plan", *args, *costs, "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    return out.read_text(), devices, err


@pytest.mark.parametrize("example, knobs", [
    ("gpt2", ["--spec-arg", "n_layer=2", "--spec-arg", "vocab_size=1024"]),
    ("llama", ["--spec-arg", "num_hidden_layers=2", "--spec-arg", "vocab_size=1024"]),
])
@pytest.mark.parametrize("search", [[], ["--batch-size", "8"]])
def test_an_estimate_builds_on_meta_with_the_same_plan(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        example: str, knobs: list[str], search: list[str]) -> None:
    args = [str(ROOT / "examples" / f"{example}.py") + ":build", *knobs, "--stages", "2",
            "--memory", "1GiB", *search]
    meta, on_meta, err = _plan(args, tmp_path / "meta.json", monkeypatch, capsys)
    assert on_meta and set(on_meta) == {"meta"} and "note:" not in err
    weights, on_cpu, _ = _plan([*args, "--spec-arg", "device=cpu"], tmp_path / "cpu.json",
                               monkeypatch, capsys)
    assert set(on_cpu) == {"cpu"} and len(on_cpu) == len(on_meta)  # the knob given: as told
    assert meta.replace("meta.json", "cpu.json") == weights


def test_a_given_profile_builds_on_meta_with_the_same_plan(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`plan --profile` reads no weights either (a 70B shape plans from its profile in
    memory a laptop has), and plans what `plan --device-spec` plans."""
    args = [str(ROOT / "examples" / "llama.py") + ":build", "--spec-arg", "num_hidden_layers=2",
            "--spec-arg", "vocab_size=1024", "--stages", "2"]
    profile = tmp_path / "p.json"
    assert main(["profile", *args[:5], "--device", "meta", "--no-progress", "-o", str(profile)]) == 0
    given, devices, err = _plan(args, tmp_path / "given.json", monkeypatch, capsys,
                                costs=("--profile", str(profile)))
    assert devices == ["meta"] and "note:" not in err
    estimated, _, _ = _plan(args, tmp_path / "estimated.json", monkeypatch, capsys)
    made = json.loads(given)
    # the plan of a saved profile records it, for `check --spec --profile`; the rest is the same
    assert made["options"].pop("profile_file") == "p.json" and made["options"].pop("profile_sha256")
    assert made == json.loads(estimated)


SPEC = '''
import torch
from autopipe import ModelSpec


def build(*, batch_size: int = 4, {device}) -> ModelSpec:
    {check}
    model = torch.nn.Sequential(*[torch.nn.Linear(16, 16) for _ in range(4)])
    x = torch.randn(batch_size, 16)

    def batch(n: int, step: int = 0) -> tuple[tuple[torch.Tensor], torch.Tensor]:
        return (torch.randn(n * batch_size, 16),), torch.randn(n * batch_size, 16)

    return ModelSpec(model=model, example_inputs=(x,),
                     loss_fn=lambda out, y: torch.nn.functional.mse_loss(out, y), batch=batch)
'''


@pytest.mark.parametrize("device, check, why", [
    ("seed: int = 0", "pass", "its build function has no device knob"),
    ("device: str = 'cpu'", "assert device != 'meta', 'no meta here'",
     "building it on the meta device failed: "),
])
def test_an_estimate_falls_back_to_weights_and_says_why(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        device: str, check: str, why: str) -> None:
    path = tmp_path / "spec.py"
    path.write_text(SPEC.format(device=device, check=check))
    _, devices, err = _plan([f"{path}:build", "--stages", "2", "--batch-size", "8"],
                            tmp_path / "plan.json", monkeypatch, capsys)
    assert len(devices) > 2 and devices.count("meta") == devices.count("-")  # tried, then built
    assert err.count("note:") == 1 and why in err and "built with weights" in err


def test_inputs_left_on_meta_mean_a_build_with_weights(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """BERT's build puts its example inputs on ``device`` too: nothing real to trace with."""
    _, devices, err = _plan([str(ROOT / "examples" / "bert.py") + ":build", "--stages", "2"],
                            tmp_path / "plan.json", monkeypatch, capsys)
    assert devices == ["meta", "-"] and "its example inputs are on meta" in err


def test_a_size_given_with_a_preset_replaces_the_presets() -> None:
    """``--spec-arg preset=7b --spec-arg num_hidden_layers=2``: two of the 7B's layers, not 32
    (the preset gave every size and the given one was dropped, silently)."""
    spec = LOAD(f"{ROOT / 'examples' / 'llama.py'}:build", preset="7b", num_hidden_layers=2, device="meta")
    config = spec.model.config
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (2, 4096, 11008)
    with pytest.raises(ValueError, match="unknown preset '7B'"):
        LOAD(f"{ROOT / 'examples' / 'llama.py'}:build", preset="7B", device="meta")
