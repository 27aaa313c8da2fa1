"""Tests for autopipe/cli/main.py: version, subcommands, the error handler."""

from __future__ import annotations

import subprocess
import sys

import pytest

from autopipe.cli.main import SUBCOMMANDS, main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("autopipe ")


def test_every_subcommand_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for name in SUBCOMMANDS:
        with pytest.raises(SystemExit) as info:
            main([name, "--help"])
        assert info.value.code == 0
        assert "usage: autopipe " + name in capsys.readouterr().out


def test_python_dash_m() -> None:
    out = subprocess.run([sys.executable, "-m", "autopipe", "--version"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.startswith("autopipe ")
