"""Tests for autopipe/runtime/shard_comm.py: the sharded step's reduce-scatter and all-gather."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from autopipe.runtime.launch import launch

WORKER = Path(__file__).with_name("shard_comm_worker.py")


@pytest.mark.parametrize("ranks", [2, 3])
def test_owners_receive_the_mean_and_every_replica_every_piece(ranks: int) -> None:
    """Uneven pieces of three dtypes' tensors (one not contiguous, one empty), in one round
    and in many: each owner's pieces hold the replicas' mean (the pair's bits exactly), the
    rest of its gradients its own; after the gather every rank holds each owner's values."""
    log = io.StringIO()
    result = launch([sys.executable, str(WORKER)], ranks, env={"OMP_NUM_THREADS": "1"}, timeout_s=120,
                    log=log)
    assert result.code == 0, log.getvalue()
