"""benchmarks/bench_zero_sync.py: a short run of its two ranks prints each size's three syncs."""

from __future__ import annotations

import subprocess
import sys


def test_a_short_run_prints_each_sync_and_its_ratio() -> None:
    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_zero_sync", "--sizes", "64K,1M", "--repeats", "2"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if "MiB" in line]
    assert len(rows) == 2, out.stdout
    for row in rows:
        assert "ddp" in row and "zero1" in row and "before" in row and row.count("x)") == 2, row
