"""Tests for benchmarks/bench_estimator_h200.py: the estimator and the memory model against the
committed H200 measurement (profiles/h200/suite/summary.json), for the MLP."""

from __future__ import annotations

import re

import pytest

from benchmarks import bench_estimator_h200


def test_mlp_against_the_h200(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_estimator_h200.main(["--only", "mlp"]) == 0
    out = capsys.readouterr().out
    times = re.findall(r"^\| mlp \| (fp32|bf16) \|.* \| ([\d.]+) \|$", out, flags=re.MULTILINE)
    assert {dt for dt, _ in times} == {"fp32", "bf16"}
    for dt, ratio in times[:2]:  # estimate / measured forward+backward, within the 25%
        assert abs(float(ratio) - 1) <= 0.25, (dt, ratio)
    # the memory row: Adam's step temporary counted, predicted / measured within 10%
    row = re.search(r"^\| mlp \| fp32 \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$",
                    out, flags=re.MULTILINE)
    assert row is not None
    then, step, now = float(row.group(3)), float(row.group(4)), float(row.group(6))
    assert then < 0.9 and step > 0.4 and abs(now - 1) <= 0.1
