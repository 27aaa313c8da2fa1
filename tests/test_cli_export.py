"""Tests for autopipe/cli/export_cmd.py and `plan --granularity/--cut-at`: the commands end to end,
and each bad input exits 2 with a one-line error that names the problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autopipe.cli.main import main
from tests.conftest import ROOT
from tests.test_cli_bad_inputs import _run

MLP = str(ROOT / "examples" / "mlp.py") + ":build"
MLP_PROFILE = str(ROOT / "profiles" / "cpu" / "mlp.json")


@pytest.fixture(scope="module")
def plans(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The MLP example planned in 3 stages: cut anywhere, between whole blocks only, and
    between its top-level modules (``inp``, ``blocks``, ``head``: units no engine counts as
    transformer layers)."""
    tmp = tmp_path_factory.mktemp("export")
    out = {"tmp": str(tmp), "node": str(tmp / "node.json"), "layer": str(tmp / "layer.json"),
           "unlike": str(tmp / "unlike.json"), "inner": str(tmp / "inner.json")}
    base = ["plan", MLP, "--stages", "3", "--microbatches", "6", "--profile", MLP_PROFILE]
    assert main([*base, "-o", out["node"]]) == 0
    assert main([*base, "--cut-at", "blocks.*", "-o", out["layer"]]) == 0
    assert main([*base, "--cut-at", "*", "-o", out["unlike"]]) == 0
    assert main([*base, "--cut-at", "blocks.*.0", "-o", out["inner"]]) == 0
    return out


def test_plan_reports_the_restriction_and_export_writes_each_format(
        plans: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(["show", plans["layer"], "--no-timeline"], capsys)
    assert code == 0
    assert "cuts between whole layers (blocks.*, 8 layers; per stage" in out
    assert "against cutting anywhere" in out and "unrestricted" in out
    for fmt in ("torchtitan", "deepspeed", "megatron"):
        target = Path(plans["tmp"]) / f"{fmt}.json"
        code, printed, err = _run(["export", plans["layer"], "--format", fmt], capsys)
        assert code == 0 and err == ""
        code, _, err = _run(["export", plans["layer"], "--format", fmt, "-o", str(target)], capsys)
        assert code == 0 and f"wrote {target}: {fmt}, 3 stages" in err
        assert target.read_text() == printed  # stdout and the file are the same JSON
        data = json.loads(printed)
        assert data["schema"] == "autopipe.export/1" and data["format"] == fmt
        assert sum(data["plan"]["layers_per_stage"]) == 8
    data = json.loads((Path(plans["tmp"]) / "torchtitan.json").read_text())
    parts = data["parallelism"]["module_fqns_per_model_part"]
    assert parts[0][0] == "inp" and parts[-1][-1] == "head"
    assert [m for p in parts for m in p if m.startswith("blocks.")] == [f"blocks.{i}" for i in range(8)]


def test_unlike_units_export_where_the_engine_lists_modules(plans: dict[str, str],
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A --cut-at over unlike modules is a plan (torchtitan's and DeepSpeed's module lists say
    exactly what each stage holds); Megatron-LM, which counts transformer layers, refuses it
    (above). Before 2026-12-07 it wrote `--num-layers 3` for an MLP of 8 blocks."""
    for fmt, key in (("torchtitan", "parallelism"), ("deepspeed", "layers")):
        code, out, err = _run(["export", plans["unlike"], "--format", fmt], capsys)
        assert code == 0, err
        assert "blocks" in json.dumps(json.loads(out)[key])
    code, _, err = _run(["export", plans["unlike"], "--format", "megatron"], capsys)
    assert code == 2 and "--granularity layer and no --cut-at" in err and "--format torchtitan" in err


# (id, argv with {file} placeholders, message fragment)
CASES: list[tuple[str, list[str], str]] = [
    ("export: plan cut anywhere", ["export", "{node}", "--format", "torchtitan"],
     "the plan records no layer boundaries"),
    ("export: unknown format", ["export", "{layer}", "--format", "colossal"], "invalid choice: 'colossal'"),
    ("export: megatron of unlike units", ["export", "{unlike}", "--format", "megatron"],
     "but the layers this plan cuts between (3, matched by '*') are not the numbered blocks of a "
     "module list (inp, blocks, head)"),
    # until 2026-12-07: "... cuts between the layers of 8 module lists (blocks.0, blocks.1, ...)",
    # with a hint about an encoder-decoder's two stacks
    ("export: megatron of modules inside the blocks", ["export", "{inner}", "--format", "megatron"],
     "the layers this plan cuts between (8, matched by 'blocks.*.0') are not all the blocks of blocks.0, "
     "blocks.1"),
    ("export: no format", ["export", "{layer}"], "the following arguments are required: --format"),
    ("export: missing plan", ["export", "{tmp}/nosuch.json", "--format", "megatron"], "nosuch.json: no such file"),
    # until 2026-12-07 it said only "schema is 'autopipe.profile/1', expected 'autopipe.plan/1'"
    ("export: a profile as the plan", ["export", MLP_PROFILE, "--format", "megatron"],
     "expected 'autopipe.plan/1': it is a profile, not a plan"),
    ("export: output is a directory", ["export", "{layer}", "--format", "megatron", "-o", "{tmp}"],
     "cannot write (is a directory)"),
    ("plan: --cut-at matches nothing",
     ["plan", MLP, "--stages", "2", "--profile", MLP_PROFILE, "--cut-at", "layers.*", "-o", "{tmp}/o.json"],
     "--cut-at 'layers.*' matches no module of the model"),
    ("plan: --cut-at bad regex",
     ["plan", MLP, "--stages", "2", "--cut-at", "blocks.(", "-o", "{tmp}/o.json"],
     "not a valid regular expression"),
    ("plan: more stages than layers",
     ["plan", MLP, "--stages", "11", "--microbatches", "11", "--profile", MLP_PROFILE,
      "--granularity", "layer", "-o", "{tmp}/o.json"],
     "cannot cut the model into 11 stages at layer boundaries: the 8 layers found blocks.*"),
    ("plan: --granularity node with --cut-at",
     ["plan", MLP, "--stages", "2", "--profile", MLP_PROFILE, "--granularity", "node", "--cut-at", "blocks.*",
      "-o", "{tmp}/o.json"],
     "--granularity node cuts anywhere, but --cut-at 'blocks.*' cuts only between the modules it matches"),
    ("plan: unknown granularity",
     ["plan", MLP, "--stages", "2", "--granularity", "block", "-o", "{tmp}/o.json"], "invalid choice: 'block'"),
]


@pytest.mark.parametrize("argv,fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_inputs_exit_2(argv: list[str], fragment: str, plans: dict[str, str],
                           capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run([a.format(**plans) for a in argv], capsys)
    assert code == 2, (code, out, err)
    assert fragment in err, err
    assert "Traceback" not in err
    assert "hint:" in err or "usage:" in err
    assert not (Path(plans["tmp"]) / "o.json").exists()


def test_check_spec_replans_with_the_same_restriction(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """`check --spec` re-plans with the plan's --cut-at: the same whole-block stages come back."""
    plan = tmp_path / "plan.json"
    again = tmp_path / "again.json"
    assert main(["plan", MLP, "--stages", "3", "--device-spec", "h100", "--cut-at", r"blocks\.\d+",
                 "-o", str(plan)]) == 0
    code, _, err = _run(["check", str(plan), "--spec", MLP, "-o", str(again)], capsys)
    assert code == 0, err
    first, second = json.loads(plan.read_text()), json.loads(again.read_text())
    assert second["options"]["granularity"]["pattern"] == r"blocks\.\d+"
    assert second["options"]["granularity"]["stage_units"] == first["options"]["granularity"]["stage_units"]


def test_a_profile_passed_as_the_plan_says_what_to_pass_instead(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["export", MLP_PROFILE, "--format", "torchtitan"], capsys)
    assert code == 2 and err.count("error:") == 1, err
    assert f"hint: pass a plan, written by `autopipe plan SPEC ... -o PLAN.json`; plan with it: " \
           f"`autopipe plan SPEC --profile {MLP_PROFILE} --stages N -o PLAN.json`" in err, err


def test_the_cli_exports_with_the_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`autopipe export PLAN --format torchtitan --profile PROFILE.json` completes the parts
    (ESM's contact_head, which no node reads: [Note: every parameter in a part]); a profile
    file that is not there exits 2 with a message, never a traceback."""
    from tests.test_export_zoo import planned, profiled  # the zoo imports transformers: here only

    plan, profile = tmp_path / "plan.json", tmp_path / "profile.json"
    planned("esm").save(plan)
    profiled("esm")[1].save(profile)
    out = tmp_path / "tt.json"
    assert main(["export", str(plan), "--format", "torchtitan", "--profile", str(profile), "-o", str(out)]) == 0
    assert "note: no node of the plan reads the parameters of esm.contact_head" in capsys.readouterr().err
    assert json.loads(out.read_text())["parallelism"]["module_fqns_per_model_part"][-1][-1] == "esm.contact_head"
    assert main(["export", str(plan), "--format", "torchtitan", "--profile", str(tmp_path / "none.json")]) == 2
    assert "Traceback" not in capsys.readouterr().err
