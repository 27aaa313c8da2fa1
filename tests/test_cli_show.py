"""Tests for autopipe/cli/show_cmd.py: `autopipe show` of a profile."""

from __future__ import annotations

from pathlib import Path

import pytest

from autopipe.cli.main import main
from tests.conftest import ROOT

MLP = str(ROOT / "examples" / "mlp.py") + ":build"


def test_shows_a_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Until 2026-12-07 `show PROFILE.json` said "schema is 'autopipe.profile/1', expected
    'autopipe.plan/1'"; it prints the profile's summary and how to plan with it."""
    out = tmp_path / "mlp.json"
    assert main(["profile", MLP, "--spec-arg", "layers=3", "--device", "meta", "--no-progress",
                 "-o", str(out)]) == 0
    written = capsys.readouterr().out.splitlines()[:-1]  # the summary, less "wrote …"
    assert main(["show", str(out)]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert shown[0] == written[0].replace("mlp:", f"{MLP}:", 1) and shown[1:-1] == written[1:]
    assert shown[-1] == f"plan with it: autopipe plan {MLP} --spec-arg layers=3 --profile {out} " \
                        f"--stages N -o PLAN.json"
    png = tmp_path / "x.png"
    assert main(["show", str(out), "--png", str(png), "--no-timeline"]) == 2
    err = capsys.readouterr().err
    assert "is a profile, which has no schedule for --png, --no-timeline to draw" in err
    assert not png.exists()
