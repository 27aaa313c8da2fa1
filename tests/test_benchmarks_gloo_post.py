"""benchmarks/bench_gloo_post.py: sizes parse, and a short run of its two ranks prints every case."""

from __future__ import annotations

import subprocess
import sys

import pytest

from benchmarks.bench_gloo_post import CASES, parse_size

from .conftest import ROOT


def test_sizes_are_binary_units() -> None:
    assert [parse_size(s) for s in ("0", "16K", "224k", "4M", " 7 ")] == [0, 16384, 229376, 4 << 20, 7]


@pytest.mark.distributed
def test_a_short_run_prints_each_size_and_case() -> None:
    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_gloo_post", "--sizes", "0,16K", "--repeats", "3"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [ln.split() for ln in out.stdout.splitlines() if " KiB " in ln]
    assert [(r[0], r[2]) for r in rows] == [(size, case) for size in ("0", "16") for case in CASES]
