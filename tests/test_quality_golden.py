"""The partition-quality gate: profiles/golden.json re-planned, and a worse planner caught."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import autopipe.partition.planner as planner
from autopipe.cli.main import main
from autopipe.errors import PlanError
from autopipe.partition.ilp import IlpResult
from autopipe.quality.golden import check_golden, load_golden, refresh_golden, table

from .conftest import ROOT

GOLDEN = ROOT / "profiles" / "golden.json"


def test_golden_file_holds() -> None:
    """The CI gate: no stored case plans worse (or solves slower) than recorded."""
    results = check_golden(GOLDEN)
    assert len(results) >= 20
    failures = [f for r in results for f in r.failures]
    assert not failures, "\n".join(failures)
    # the recorded lower bounds are honest and every case is solved to the 1% gap
    for r in results:
        assert r.now.lower_bound_s <= r.now.iteration_s * (1 + 1e-9)
        assert r.now.gap <= 0.01, r.case.label


# Profiles whose cases solve in about a second each: the tests of the gate's mechanics
# below re-plan them several times (the GPT-2 and Llama cases take 40-50 s a pass on CI's
# host; test_golden_file_holds covers every case).
QUICK = ("cpu/mlp.json", "cpu/resnet.json", "cpu/unet.json", "cpu/bert.json")
BEATEN = ("h100/mlp.json",)
"""Where a planner without its ILP (the best heuristic split) loses most beyond the
tolerance: +2.0% at 4 stages. (Bert's 4-stage CPU case was, +36%, while the ILP alone could
put the loss on a stage of its own: [Note: the loss is part of the last stage].)"""


def _some_cases(tmp_path: Path, profiles: tuple[str, ...] = QUICK) -> Path:
    """A golden file with just the cases of ``profiles``, copied beside their profiles."""
    _, cases = load_golden(GOLDEN)
    for c in cases:
        if c.profile in profiles:
            (tmp_path / c.profile).parent.mkdir(exist_ok=True)
            shutil.copy(GOLDEN.parent / c.profile, tmp_path / c.profile)
    data = json.loads(GOLDEN.read_text())
    data["cases"] = [c for c in data["cases"] if c["profile"] in profiles]
    assert {c["profile"] for c in data["cases"]} == set(profiles)
    (tmp_path / "golden.json").write_text(json.dumps(data))
    return tmp_path / "golden.json"


def test_gate_catches_a_worse_planner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Replace the ILP by its warm start (the best heuristic): the gate must notice."""
    golden = _some_cases(tmp_path, BEATEN)
    assert not [f for r in check_golden(golden) for f in r.failures]

    def no_search(problem: object, *, incumbent: tuple[int, ...] | None = None,
                  recompute: tuple[int, ...] | None = None, **_: object) -> IlpResult:
        assert incumbent is not None
        return IlpResult(stage_of=tuple(incumbent), status="optimal", objective_s=0.0,
                         lower_bound_s=0.0, model_objective_s=float("nan"), seconds=0.0,
                         solver="none", binaries=0, rounds=0, recompute=tuple(recompute or ()))

    monkeypatch.setattr(planner, "solve_ilp", no_search)
    worse = [f for r in check_golden(golden) for f in r.failures]
    assert worse, "a planner without its ILP went unnoticed"
    assert "iteration" in worse[0]


def test_refresh_records_results_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    golden = _some_cases(tmp_path, ("cpu/mlp.json", "cpu/bert.json"))
    data = json.loads(golden.read_text())
    for c in data["cases"]:
        c["iteration_s"] = 1e-9  # an impossible record: every case now "regresses"
    golden.write_text(json.dumps(data))
    assert main(["check", "--golden", str(golden)]) == 1
    assert "WORSE" in capsys.readouterr().out
    fresh = refresh_golden(golden)
    assert all(c.iteration_s > 1e-6 for c in fresh)
    assert main(["check", "--golden", str(golden)]) == 0
    out = capsys.readouterr().out
    assert "| cpu/bert.json |" in out and " 0 failed" in out
    assert "autopipe" in table(fresh)


def test_corrupt_golden_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "golden.json"
    bad.write_text('{"schema": "autopipe.golden/1", "cases": [{"nope": 1}]}')
    with pytest.raises(PlanError, match="malformed golden file"):
        load_golden(bad)
    assert main(["check", "--golden", str(bad)]) == 2
    assert "malformed" in capsys.readouterr().err


@pytest.mark.parametrize(("field", "value", "says"), [
    ("tolerance", -1, "tolerance -1 is not a non-negative fraction"),
    ("tolerance", "1%", "tolerance '1%' is not a non-negative fraction"),
    ("memory", "lots", "case 0 (cpu/mlp.json p=2 mem=lots m=4): memory: cannot read size 'lots'"),
    ("stages", "two", "golden case cpu/mlp.json p=two"),
])
def test_bad_values_are_refused_naming_them(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            field: str, value: object, says: str) -> None:
    """A negative tolerance read every case WORSE (+0.00%, exit 1); a bad case value failed
    without naming the case. Now: exit 2, naming the file's tolerance or the case."""
    golden = _some_cases(tmp_path, ("cpu/mlp.json",))
    data = json.loads(golden.read_text())
    data["cases"] = data["cases"][:1]
    if field == "tolerance":
        data["tolerance"] = value
    else:
        data["cases"][0][field] = value
    golden.write_text(json.dumps(data))
    assert main(["check", "--golden", str(golden)]) == 2
    assert says in capsys.readouterr().err
