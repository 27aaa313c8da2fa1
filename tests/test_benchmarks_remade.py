"""benchmarks/bench_remade.py: the plan part at two layers of the 7B's width in 2 stages, and its options."""

from __future__ import annotations

import pytest

from benchmarks import bench_remade


def test_a_slow_link_makes_values_again_and_a_fast_one_sends_them(capsys: pytest.CaptureFixture[str]) -> None:
    bench_remade.plan_part([4096], ["5e9", "1e15"], layers=2, stages=2)
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.lstrip().startswith("4096 ")]
    slow, fast = rows
    # columns: seq, link GB/s, sent step, ms, auto step, ms, sent/auto, made again, cuts, all step, ms
    assert int(slow[7]) > 0 and float(slow[6]) > 1.0, slow
    assert int(fast[7]) == 0 and float(fast[6]) == 1.0, fast
    # auto is never slower than sending every value (it may be than making every one
    # again: docs/cost-model.md, "the ILP prices what a stage makes again")
    for row in rows:
        assert float(row[4]) <= float(row[2]) + 0.05 and float(row[12]) > 0, row


def test_unknown_part_is_refused() -> None:
    with pytest.raises(SystemExit) as e:
        bench_remade.main(["--part", "both"])
    assert e.value.code == 2
