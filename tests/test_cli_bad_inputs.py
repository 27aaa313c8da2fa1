"""Bad inputs across the CLI commands: each exits 2 with a one-line error naming the problem.

One row per mistake a user can make: a flag that does not apply to the chosen mode,
a missing or broken file, a plan that does not fit the model or cannot run. Every row
must give exit code 2, the message fragment, a hint or argparse's usage, and no
traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from autopipe.cli.main import main
from tests.conftest import ROOT

MLP_FILE = str(ROOT / "examples" / "mlp.py")
MLP = MLP_FILE + ":build"


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def _edit(source: Path, target: Path, change: Any) -> str:
    data = json.loads(source.read_text())
    change(data)
    target.write_text(json.dumps(data))
    return str(target)


def _empty_stage(d: dict[str, Any]) -> None:
    d["stages"][0]["nodes"] = []


def _node_twice(d: dict[str, Any]) -> None:
    d["stages"][1]["nodes"].append(d["stages"][0]["nodes"][-1])


def _node_dropped(d: dict[str, Any]) -> None:
    d["stages"][1]["nodes"].pop(0)


def _send_from_later(d: dict[str, Any]) -> None:
    d["stages"][0]["sends"][0]["tensor"] = d["stages"][1]["nodes"][-1]


def _output_first(d: dict[str, Any]) -> None:
    d["stages"][1]["nodes"].remove("output")
    d["stages"][0]["nodes"].append("output")


def _negative_time(d: dict[str, Any]) -> None:
    d["stages"][1]["forward_s"] = -1.0


def _speed_zero(d: dict[str, Any]) -> None:  # until 2026-12-07 read as it was (check --spec divided by it)
    d["devices"][1]["speed"] = 0


def _stage_on_mps(d: dict[str, Any]) -> None:  # until 2026-12-07 priced as a GPU, run on CUDA
    d["stages"][0]["device"] = "mps"


def _no_stages_key(d: dict[str, Any]) -> None:
    del d["stages"]


def _unknown_schedule(d: dict[str, Any]) -> None:
    d["schedule"] = "zigzag"


def _cut_moved(d: dict[str, Any]) -> None:  # until 2026-12-07 shown with the old cut's times
    d["stages"][0]["nodes"].append(d["stages"][1]["nodes"].pop(0))


def _node_renamed(d: dict[str, Any]) -> None:  # until 2026-12-07 shown as it was
    d["stages"][0]["nodes"][2] = "nosuch_node"


def _memory_a_string(d: dict[str, Any]) -> None:  # until 2026-12-07 a TypeError traceback in abs()
    d["stages"][0]["memory"]["params"] = "lots"


def _gap_null(d: dict[str, Any]) -> None:  # until 2026-12-07 a TypeError traceback in a format
    d["solver"]["gap"] = None


def _microbatches_a_string(d: dict[str, Any]) -> None:  # until 2026-12-07 read as int("4")
    d["microbatches"] = "4"


def _stage_time_edited(d: dict[str, Any]) -> None:
    d["stages"][1]["forward_s"] *= 0.5


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One planned MLP (2 stages, estimated), its profile, and broken variants of both."""
    tmp = tmp_path_factory.mktemp("bad_inputs")
    plan, profile, other = tmp / "plan.json", tmp / "profile.json", tmp / "other.json"
    assert main(["profile", MLP, "--device", "meta", "--no-progress", "-o", str(profile)]) == 0
    assert main(["plan", MLP, "--stages", "2", "--profile", str(profile), "-o", str(plan)]) == 0
    assert main(["plan", MLP, "--spec-arg", "layers=3", "--stages", "2", "--device-spec", "h100",
                 "-o", str(other)]) == 0
    (tmp / "broken.json").write_text('{"schema": "autopipe.plan/1", "stages": [')
    (tmp / "spec_no_build.py").write_text("X = 1\n")
    (tmp / "empty.json").write_text("")
    (tmp / "golden.json").write_text('{"schema": "autopipe.golden/1", "cases": []}')
    files = {"tmp": str(tmp), "plan": str(plan), "profile": str(profile), "other": str(other),
             "broken": str(tmp / "broken.json"), "no_build": str(tmp / "spec_no_build.py"),
             "empty": str(tmp / "empty.json"), "golden": str(tmp / "golden.json")}
    for name, change in [("empty_stage", _empty_stage), ("node_twice", _node_twice),
                         ("node_dropped", _node_dropped), ("send_from_later", _send_from_later),
                         ("output_first", _output_first), ("negative_time", _negative_time),
                         ("no_stages_key", _no_stages_key), ("unknown_schedule", _unknown_schedule),
                         ("cut_moved", _cut_moved), ("node_renamed", _node_renamed),
                         ("memory_a_string", _memory_a_string), ("gap_null", _gap_null),
                         ("microbatches_a_string", _microbatches_a_string),
                         ("stage_time_edited", _stage_time_edited), ("speed_zero", _speed_zero),
                         ("stage_on_mps", _stage_on_mps)]:
        files[name] = _edit(plan, tmp / f"{name}.json", change)
    return files


OUT = ["-o", "{tmp}/out.json"]
PLAN = ["plan", MLP, "--stages", "2", *OUT]
GPUS = ["plan", MLP, "--gpus", "4", "--profile", "{profile}", *OUT, "--batch-size", "32"]
PLAN_P = [*PLAN, "--profile", "{profile}"]

# (id, argv with {file} placeholders, message fragment)
CASES: list[tuple[str, list[str], str]] = [
    # autopipe profile
    ("profile: --device-spec alone estimates (since 2026-12-07), for a spec that exists",
     ["profile", MLP, "--device-spec", "nosuchgpu", *OUT], "unknown device spec 'nosuchgpu'"),
    ("profile: --device-spec with --device cpu",
     ["profile", MLP, "--device", "cpu", "--device-spec", "h100", *OUT], "--device-spec applies only"),
    ("profile: unknown device spec",
     ["profile", MLP, "--device", "meta", "--device-spec", "nosuchgpu", *OUT],
     "unknown device spec 'nosuchgpu'"),
    ("profile: --repeats with meta",
     ["profile", MLP, "--device", "meta", "--repeats", "3", *OUT], "--repeats applies only when measuring"),
    ("profile: --threads on cuda",
     ["profile", MLP, "--device", "cuda", "--threads", "2", *OUT], "--threads applies only with --device cpu"),
    ("profile: repeats 0", ["profile", MLP, "--repeats", "0", *OUT], "--repeats 0 is out of range"),
    ("profile: unknown device", ["profile", MLP, "--device", "tpu", *OUT], "unknown device 'tpu'"),
    ("profile: missing spec file", ["profile", "{tmp}/nosuch.py:build", *OUT], "does not exist"),
    ("profile: spec function missing", ["profile", MLP_FILE + ":nosuch", *OUT], "no function 'nosuch'"),
    ("profile: spec file without build", ["profile", "{no_build}:build", *OUT], "no function 'build'"),
    ("profile: spec without function", ["profile", MLP_FILE, *OUT], "has no ':function' part"),
    ("profile: --spec-arg without =", ["profile", MLP, "--spec-arg", "layers", *OUT], "is not key=value"),
    ("profile: unknown knob", ["profile", MLP, "--spec-arg", "colour=red", *OUT], "colour"),
    ("profile: output is a directory", ["profile", MLP, "--device", "meta", "-o", "{tmp}"],
     "cannot write (is a directory)"),
    # autopipe plan
    ("plan: --device", ["plan", MLP, "--stages", "2", "--device", "meta", "-o", "{tmp}/out.json"],
     "autopipe plan takes no --device (meta)"),
    # until 2026-12-07 refused only after a note that building on meta had failed, and a build
    ("plan: unknown --dtype", ["plan", MLP, "--stages", "2", "--device-spec", "h100", "--dtype", "int8",
                               "-o", "{tmp}/out.json"], "invalid choice: 'int8'"),
    ("plan: --stages 0", [*PLAN_P[:3], "0", *PLAN_P[4:]], "num_stages = 0"),
    ("plan: --stages not a number", ["plan", MLP, "--stages", "two", *OUT], "invalid int value"),
    ("plan: unknown schedule", [*PLAN_P, "--schedule", "zigzag"], "unknown schedule 'zigzag'"),
    ("plan: bad size string", [*PLAN_P, "--memory", "12XB"], "12XB"),
    ("plan: negative size", [*PLAN_P, "--memory=-1GiB"], "-1GiB"),
    # an OverflowError traceback until 2026-12-07
    ("plan: a size past any float", [*PLAN_P, "--memory", "1e400"], "size '1e400' is too large to be a number of bytes"),
    ("plan: output under a file", ["plan", MLP, "--stages", "2", "--profile", "{profile}",
                                   "-o", "{plan}/new.json"], "plan.json is a file"),
    ("plan: bad link bandwidth", [*PLAN_P, "--link-bandwidth", "fast"], "fast"),
    ("plan: missing profile", [*PLAN, "--profile", "{tmp}/missing.json"], "missing.json: no such file"),
    ("plan: malformed profile", [*PLAN, "--profile", "{broken}"], "not valid JSON"),
    ("plan: a plan as the profile", [*PLAN, "--profile", "{plan}"], "expected 'autopipe.profile/1': it is a plan, not a profile"),
    ("plan: profile of another model",
     [*PLAN_P, "--spec-arg", "layers=3"], "another model"),
    ("plan: --device-spec with --profile",
     [*PLAN_P, "--device-spec", "h100"], "--device-spec applies only when autopipe profiles"),
    ("plan: --time-limit with --method dp",
     [*PLAN_P, "--method", "dp", "--time-limit", "5"], "--time-limit applies only with --method ilp (the MIP solver)"),
    ("plan: negative --time-limit", [*PLAN_P, "--time-limit=-1"], "-1 is not positive"),
    ("plan: zero --link-bandwidth", [*PLAN_P, "--link-bandwidth", "0"], "'0' is not positive"),
    ("plan: --microbatch-sizes without the profile's size", [*GPUS, "--microbatch-sizes", "3,5"],
     "which is none of the micro-batch sizes [3, 5] asked for"),
    ("plan: infinite --time-limit", [*PLAN_P, "--time-limit", "inf"], "inf is not a finite number"),
    ("plan: --gap above 1", [*PLAN_P, "--gap", "5"], "gap 5 is not a fraction"),
    ("plan: --max-blocks 0", [*PLAN_P, "--max-blocks", "0"], "0 is not positive"),
    ("plan: build function fails on a knob", [*PLAN_P, "--spec-arg", "hidden=-3"],
     "failed: RuntimeError: Trying to create tensor with negative dimension"),
    ("plan: missing devices file", [*PLAN_P, "--devices", "{tmp}/devices.json"], "devices.json"),
    ("plan: neither --stages nor --gpus", ["plan", MLP, "--profile", "{profile}", *OUT], "give --stages N"),
    ("plan: --gpus-per-node without --gpus", [*PLAN_P, "--gpus-per-node", "8"],
     "--gpus-per-node applies only with --gpus"),
    ("plan: --gpus without --batch-size", [*GPUS[:-2], *OUT], "--gpus needs --batch-size"),
    ("plan: --gpus with --link-bandwidth", [*GPUS, "--link-bandwidth", "1e9"],
     "--link-bandwidth applies only with --stages"),
    ("plan: --gpus that do not fill nodes", [*GPUS, "--gpus-per-node", "3"], "4 GPUs do not fill nodes of 3"),
    ("plan: --stages not dividing --gpus", [*GPUS, "--stages", "3"], "3 stages do not divide 4 GPUs"),
    ("plan: --microbatch-sizes not numbers", [*GPUS, "--microbatch-sizes", "one"], "not a list of numbers"),
    # autopipe show
    ("show: nonexistent plan path", ["show", "{tmp}/nosuch.json"], "nosuch.json: no such file"),
    ("show: malformed JSON", ["show", "{broken}"], "not valid JSON"),
    # until 2026-12-07 "not valid JSON (Expecting value at line 1)", and another kind of
    # autopipe file "schema is ..., expected ...", naming neither what it is nor what to pass
    ("show: an empty file", ["show", "{empty}"], "empty.json: the file is empty"),
    ("show: a golden file", ["show", "{golden}"], "it is a golden record of partition quality, not a plan"),
    ("show: a device of speed 0", ["show", "{speed_zero}"], "'devices[1]': device 'cuda:1' has speed 0.0"),
    ("show: a stage on mps", ["show", "{stage_on_mps}"], "stages[0].device 'mps' is torch's 'mps' device type"),
    ("check: a profile as the baseline", ["check", "{plan}", "--baseline", "{profile}"],
     "it is a profile, not a plan"),
    ("check: a plan as the golden file", ["check", "--golden", "{plan}"],
     "it is a plan, not a golden record of partition quality"),
    ("check: a device of speed 0 re-planned", ["check", "{speed_zero}", "--spec", MLP, "--profile", "{profile}"],
     "has speed 0.0, not a positive number"),
    ("train: a profile as the plan", ["train", MLP, "--plan", "{profile}", "--steps", "1"],
     "it is a profile, not a plan"),
    # a profile alone is shown (its summary, tests/test_cli_show.py); with a flag that draws a
    # plan's schedule it is refused
    ("show: a profile with --png", ["show", "{profile}", "--png", "{tmp}/x.png"],
     "is a profile, which has no schedule for --png to draw"),
    ("show: plan without stages", ["show", "{no_stages_key}"], "malformed plan"),
    ("show: empty stage", ["show", "{empty_stage}"], "stage 0 has no nodes"),
    ("show: node in two stages", ["show", "{node_twice}"], "is in two stages"),
    ("show: node in no stage", ["show", "{node_dropped}"], "the stages hold 20 nodes but the model has 21"),
    ("show: send from a later stage", ["show", "{send_from_later}"], "which the later stage 1 makes"),
    ("show: output not in the last stage", ["show", "{output_first}"], "not in the last stage"),
    ("show: negative time", ["show", "{negative_time}"], "forward_s = -1.0"),
    ("show: unknown schedule", ["show", "{unknown_schedule}"], "unknown schedule 'zigzag'"),
    ("show: a cut moved by hand", ["show", "{cut_moved}"], "stages[0] differs from what `autopipe plan` wrote"),
    ("show: a node renamed by hand", ["show", "{node_renamed}"], "stages[0] differs from what"),
    ("show: a stage's time edited", ["show", "{stage_time_edited}"], "stages[1] differs from what"),
    ("show: memory a string", ["show", "{memory_a_string}"],
     "'stages[0].memory.params' is string 'lots', expected an integer"),
    ("show: gap null", ["show", "{gap_null}"], "'solver.gap' is null, expected a finite number"),
    ("show: micro-batches a string", ["show", "{microbatches_a_string}"],
     "'microbatches' is string '4', expected an integer"),
    ("show: --width with --no-timeline",
     ["show", "{plan}", "--no-timeline", "--width", "50"], "--width applies only to the text timeline"),
    ("show: --png into a directory", ["show", "{plan}", "--png", "{tmp}"], "is a directory"),
    ("show: missing runtime costs", ["show", "{plan}", "--runtime-costs", "{tmp}/c.json"], "c.json"),
    # autopipe check
    ("check: empty stage node list", ["check", "{empty_stage}", "--baseline", "{plan}"],
     "stage 0 has no nodes"),
    ("check: empty stage in the baseline", ["check", "{plan}", "--baseline", "{empty_stage}"],
     "stage 0 has no nodes"),
    ("check: a baseline edited by hand", ["check", "{plan}", "--baseline", "{cut_moved}"],
     "stages[0] differs from what"),
    ("check: missing baseline", ["check", "{plan}", "--baseline", "{tmp}/old.json"], "old.json: no such file"),
    ("check: baseline of another model", ["check", "{plan}", "--baseline", "{other}"], "different models"),
    ("check: plan/model mismatch", ["check", "{plan}", "--spec", MLP, "--spec-arg", "layers=3"],
     "another model"),
    ("check: invalid plan against the model", ["check", "{node_dropped}", "--spec", MLP],
     "the stages hold 20 nodes"),
    ("check: --spec-arg without --spec", ["check", "{plan}", "--baseline", "{plan}", "--spec-arg", "a=1"],
     "--spec-arg applies only with --spec"),
    ("check: -o without --spec", ["check", "{plan}", "--baseline", "{plan}", *OUT],
     "-o/--output applies only with --spec"),
    ("check: --refresh without --golden", ["check", "{plan}", "--baseline", "{plan}", "--refresh"],
     "--refresh applies only with --golden"),
    ("check: no plan", ["check", "--baseline", "{plan}"], "no PLAN.json given"),
    # until 2026-12-07 argparse named the parsing function: "invalid _tolerance value: '1%'"
    ("check: a percentage as the tolerance", ["check", "{plan}", "--baseline", "{plan}", "--tolerance", "1%"],
     "argument --tolerance: tolerance '1%' is not a number: write a fraction, e.g. 0.01 for 1%"),
    ("check: negative tolerance", ["check", "{plan}", "--baseline", "{plan}", "--tolerance", "-1"],
     "not a non-negative fraction"),
    # autopipe train
    ("train: missing plan", ["train", MLP, "--plan", "{tmp}/nosuch.json", "--steps", "1"], "no such file"),
    ("train: empty stage", ["train", MLP, "--plan", "{empty_stage}", "--steps", "1"], "stage 0 has no nodes"),
    ("train: plan/model mismatch",
     ["train", MLP, "--spec-arg", "layers=3", "--plan", "{plan}", "--steps", "1", "--launch", "2"],
     "another model"),
    ("train: world size", ["train", MLP, "--plan", "{plan}", "--steps", "1"], "the world size is 1"),
    ("train: --batch-size not a multiple",
     ["train", MLP, "--plan", "{plan}", "--steps", "1", "--batch-size", "7"], "not a positive multiple"),
    ("train: --launch 0", ["train", MLP, "--plan", "{plan}", "--steps", "1", "--launch", "0"], "--launch 0"),
    ("train: --timeline into a directory",
     ["train", MLP, "--plan", "{plan}", "--steps", "1", "--timeline", "{tmp}"], "is a directory"),
]


def test_the_table_is_long_enough() -> None:
    assert len(CASES) >= 25
    assert len({c[0] for c in CASES}) == len(CASES)
    assert {c[1][0] for c in CASES} == {"profile", "plan", "show", "check", "train"}


@pytest.mark.parametrize(("argv", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(argv: list[str], message: str, files: dict[str, str],
                   capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run([a.format(**files) for a in argv], capsys)
    assert code == 2, err
    assert message in err, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1, err  # one line saying what is wrong ...
    assert "hint:" in err or err.startswith("usage:"), err  # ... and how to fix it
    assert not Path(files["tmp"], "out.json").exists()
