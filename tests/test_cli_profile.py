"""Tests for autopipe/cli/profile_cmd.py: `autopipe profile`."""

from __future__ import annotations

from pathlib import Path

import pytest

from autopipe.cli.main import main
from autopipe.profile import Profile
from tests.conftest import ROOT

MLP = str(ROOT / "examples" / "mlp.py") + ":build"
LLAMA = str(ROOT / "examples" / "llama.py") + ":build"


def test_measure_on_cpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mlp.json"
    code = main(["profile", MLP, "--spec-arg", "layers=3", "--repeats", "2", "--warmup", "0",
                 "-o", str(out)])
    assert code == 0
    p = Profile.load(out)
    assert p.method == "measure" and p.device == "cpu" and len(p.nodes) == 11
    text = capsys.readouterr().out
    assert "sum of nodes / whole =" in text and f"wrote {out}" in text
    assert p.meta["repeats"] == 2 and p.meta["threads"] == 1


def test_estimate_on_meta(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "llama.json"
    code = main(["profile", LLAMA, "--device", "meta", "--device-spec", "a100", "--dtype", "bf16",
                 "-o", str(out)])
    assert code == 0
    p = Profile.load(out)
    assert p.device == "estimate:a100" and p.dtype == "bfloat16"
    assert "TFLOP forward+backward" in capsys.readouterr().out


def test_estimate_with_own_spec_file(tmp_path: Path) -> None:
    spec = ROOT / "autopipe" / "profile" / "devices" / "h200.json"
    out = tmp_path / "p.json"
    assert main(["profile", MLP, "--device", "meta", "--device-spec", str(spec), "-o", str(out)]) == 0
    assert Profile.load(out).meta["device_spec"]["name"] == "h200"


def test_build_without_device_argument(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "plain.py"
    src.write_text(
        "import torch\nfrom autopipe import ModelSpec\n"
        "def build():\n"
        "    m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())\n"
        "    return ModelSpec(model=m, example_inputs=(torch.randn(2, 4),),\n"
        "                     loss_fn=lambda o, t: o.sum(), batch=lambda n, step=0: ((torch.randn(2 * n, 4),), None))\n")
    out = tmp_path / "p.json"
    assert main(["profile", f"{src}:build", "--device", "meta", "-o", str(out)]) == 0
    assert "takes no device=" in capsys.readouterr().err
    assert Profile.load(out).method == "estimate"


@pytest.mark.parametrize(("argv", "message"), [
    (["--device", "meta", "--device-spec", "tpu9"], "unknown device spec 'tpu9'"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--repeats", "0"], "repeats = 0"),
])
def test_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                           argv: list[str], message: str) -> None:
    out = tmp_path / "p.json"
    assert main(["profile", MLP, *argv, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "hint:" in err
    assert not out.exists()
