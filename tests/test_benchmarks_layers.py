"""benchmarks/bench_layers.py at a tiny T5: three ways to cut, one row each."""

from __future__ import annotations

import pytest

from benchmarks import bench_layers


def test_tiny_t5_prints_each_way_to_cut(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_layers.main(["--stages", "2", "--layers", "3", "--decoder-layers", "4", "--d-model", "16",
                              "--heads", "2", "--vocab", "64", "--source", "8", "--target", "8",
                              "--batch-size", "2", "--microbatches", "2"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.lstrip().startswith("2 ")]
    assert [r[1] for r in rows] == ["anywhere", "layers", "decoder"]
    # both stacks' blocks are layers, the decoder's alone when cut there; neither beats anywhere
    assert rows[0][2] == "-" and rows[1][4] == "7" and rows[2][4] == "4"
    assert all(float(r[-2].rstrip("%")) >= -0.5 for r in rows[1:])
