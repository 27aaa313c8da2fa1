"""Tests for autopipe/partition/infeasible.py: what overflows and what would fit."""

from __future__ import annotations

import re

import pytest

from autopipe.errors import InfeasiblePlanError
from autopipe.partition import plan_profile
from autopipe.partition.synthetic import synthetic_profile


def test_names_the_overflow_and_a_stage_count_that_fits() -> None:
    prof = synthetic_profile(80, seed=2)
    fits = plan_profile(prof, num_stages=8, microbatches=16)
    limit = int(max(s.memory.total for s in fits.stages) * 1.05)
    with pytest.raises(InfeasiblePlanError) as info:
        plan_profile(prof, num_stages=2, microbatches=16, memory_limit=limit)
    err = info.value
    assert re.search(r"stage \d needs [\d.]+ [KMG]iB but cuda:\d has [\d.]+ [KMG]iB", err.message)
    assert "the most memory-balanced split needs [" in err.message
    m = re.search(r"--stages (\d+)", err.hint or "")
    assert m is not None
    plan_profile(prof, num_stages=int(m.group(1)), microbatches=16, memory_limit=limit)


def test_gpipe_suggests_fewer_microbatches() -> None:
    prof = synthetic_profile(40, seed=2)
    with pytest.raises(InfeasiblePlanError) as info:
        plan_profile(prof, num_stages=2, microbatches=16, schedule="gpipe", memory_limit="800MiB",
                     recompute="none")
    m = re.search(r"--microbatches (\d+)", info.value.hint or "")
    assert m is not None
    plan_profile(prof, num_stages=2, microbatches=int(m.group(1)), schedule="gpipe",
                 memory_limit="800MiB", recompute="none")
    # recomputation fits too, and the hint says so: the default (auto) plan is the one it names
    assert "--recompute auto" in (info.value.hint or "")
    auto = plan_profile(prof, num_stages=2, microbatches=16, schedule="gpipe", memory_limit="800MiB")
    assert auto.recomputes and all(s.memory.total <= 800 << 20 for s in auto.stages)
