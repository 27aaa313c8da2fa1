"""Tests for autopipe/cli/profile_cmd.py: `autopipe profile`."""

from __future__ import annotations

import json
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


def test_a_model_on_meta_is_not_measured(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Built with ``device=meta`` but measured (no --device meta): a clear error naming the
    estimate, where a traceback from copying meta tensors came out until 2026-12-06."""
    out = tmp_path / "llama.json"
    assert main(["profile", LLAMA, "--spec-arg", "device=meta", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "weights are on the meta device" in err and "--device meta" in err and "Traceback" not in err
    assert not out.exists()


def test_estimate_with_own_spec_file(tmp_path: Path) -> None:
    spec = ROOT / "autopipe" / "profile" / "devices" / "h200.json"
    out = tmp_path / "p.json"
    assert main(["profile", MLP, "--device", "meta", "--device-spec", str(spec), "-o", str(out)]) == 0
    assert Profile.load(out).meta["device_spec"]["name"] == "h200"
    # --device-spec alone estimates, as `plan --device-spec` does (refused until 2026-12-07)
    assert main(["profile", MLP, "--device-spec", "a100", "-o", str(out)]) == 0
    assert Profile.load(out).meta["device_spec"]["name"] == "a100"


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
    assert "built with weights, which the estimate does not read, as its build function has no " \
        "device knob" in capsys.readouterr().err
    assert Profile.load(out).method == "estimate"


TINY = {"gpt2": ["--spec-arg", "n_layer=2", "--spec-arg", "vocab_size=1024"],
        "llama": ["--spec-arg", "num_hidden_layers=2", "--spec-arg", "vocab_size=1024"]}


@pytest.mark.parametrize("example", sorted(TINY))
def test_an_estimate_is_a_profile_plan_takes(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             example: str) -> None:
    """Built as `plan --device-spec` builds it (on meta, traced with storage on the CPU):
    `plan --profile` accepts it and makes the plan `plan --device-spec` makes."""
    spec = [str(ROOT / "examples" / f"{example}.py") + ":build", *TINY[example]]
    profile = tmp_path / "p.json"
    assert main(["profile", *spec, "--device", "meta", "--device-spec", "h100", "--no-progress",
                 "-o", str(profile)]) == 0
    assert Profile.load(profile).meta["build"]["traced_on"] == "cpu"
    plan = ["plan", *spec, "--stages", "2", "--memory", "1GiB", "-o"]
    assert main([*plan, str(tmp_path / "given.json"), "--profile", str(profile)]) == 0, \
        capsys.readouterr().err
    assert main([*plan, str(tmp_path / "estimated.json"), "--device-spec", "h100"]) == 0
    given = json.loads((tmp_path / "given.json").read_text())
    # the plan of a saved profile records it, for `check --spec --profile`; the rest is the same
    assert given["options"].pop("profile_file") == "p.json" and given["options"].pop("profile_sha256")
    assert given == json.loads((tmp_path / "estimated.json").read_text())
    assert given["stages"][0]["nodes"] and given["predicted"]["iteration_s"] > 0


def test_a_profile_of_another_build_names_the_difference(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A profile traced on meta (``--spec-arg device=meta``) has other nodes than a CPU build."""
    spec = [str(ROOT / "examples" / "gpt2.py") + ":build", *TINY["gpt2"]]
    profile = tmp_path / "p.json"
    assert main(["profile", *spec, "--spec-arg", "device=meta", "--device", "meta", "--no-progress",
                 "-o", str(profile)]) == 0
    capsys.readouterr()
    assert main(["plan", *spec, "--stages", "2", "--profile", str(profile),
                 "-o", str(tmp_path / "plan.json")]) == 2
    err = capsys.readouterr().err
    assert "the profile is for another model" in err
    assert "this command has --spec-arg n_layer=2 --spec-arg vocab_size=1024;" in err
    assert "traced on meta, this build on cpu" in err
    assert "hint: give plan the SPEC and knobs" in err and "--spec-arg device=meta)" in err


@pytest.mark.parametrize(("argv", "message"), [
    (["--device", "meta", "--device-spec", "tpu9"], "unknown device spec 'tpu9'"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--repeats", "0"], "--repeats 0 is out of range"),
    (["--warmup", "-1"], "--warmup -1 is out of range"),
    # it hinted "use threads >= 1, or None for torch's default" (None: no command-line value)
    (["--threads", "-2"], "hint: use --threads 1 or more, or 0 for torch's default"),
])
def test_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                           argv: list[str], message: str) -> None:
    out = tmp_path / "p.json"
    assert main(["profile", MLP, *argv, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "hint:" in err
    assert "note:" not in err  # said before any build
    assert not out.exists()
