"""benchmarks/bench_init_memory.py at tiny shapes: its code paths, and the pipeline's first loss."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import bench_init_memory

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def test_tiny_run_reports_each_rank(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = bench_init_memory.main(["--layers", "2", "--hidden", "64", "--intermediate", "128",
                                   "--heads", "4", "--kv-heads", "2", "--vocab", "512", "--seq", "16",
                                   "--steps", "2", "--out", str(tmp_path), "--json", str(tmp_path / "f.json")])
    figures = json.loads((tmp_path / "f.json").read_text())
    assert code == 0 and figures["first_loss_equal"]
    ranks = figures["ranks"]
    assert [r["stages"] for r in ranks] == [[0], [1]]
    # each rank held its own stage's parameters, together the model's, each about half
    assert sum(r["params"] for r in ranks) == figures["params"]
    assert all(0.25 < r["params"] / figures["params"] < 0.75 for r in ranks)
    assert all(r["peak"] >= r["before"] > 0 and len(r["step_s"]) == 2 for r in ranks)
    out = capsys.readouterr().out
    assert "rank 0 (stage 0): peak resident" in out and "first loss: pipeline" in out
    assert "step: predicted " in out and "measured median " in out
