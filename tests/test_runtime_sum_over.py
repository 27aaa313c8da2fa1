"""Tests for autopipe/runtime/sum_over.py: a sum over two CPU ranks swaps, larger groups all-reduce."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from autopipe.runtime.launch import launch

WORKER = Path(__file__).with_name("sum_over_worker.py")


@pytest.mark.parametrize("ranks", [2, 3])
def test_sums_are_exact_and_equal_on_every_rank(ranks: int) -> None:
    log = io.StringIO()
    result = launch([sys.executable, str(WORKER)], ranks, env={"OMP_NUM_THREADS": "1"}, timeout_s=120,
                    log=log)
    assert result.code == 0, log.getvalue()
