"""Tests for autopipe/runtime/launch.py: ranks get the torchrun environment; a failure stops the job."""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

from autopipe.runtime.launch import launch


def test_ranks_get_the_torchrun_environment(tmp_path: Path) -> None:
    code = ("import os; e = os.environ; open(os.path.join(os.environ['OUT'], e['RANK']), 'w').write("
            "' '.join(e[k] for k in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')))")
    result = launch([sys.executable, "-c", code], 3, env={"OUT": str(tmp_path)})
    assert result.code == 0 and result.codes == (0, 0, 0)
    lines = [(tmp_path / str(r)).read_text().split() for r in range(3)]
    assert [ln[:4] for ln in lines] == [[str(r), str(r), "3", "127.0.0.1"] for r in range(3)]
    assert len({ln[4] for ln in lines}) == 1  # one rendezvous port


def test_a_failed_rank_stops_a_hanging_one() -> None:
    code = "import os, sys, time; r = int(os.environ['RANK']); sys.exit(3) if r == 0 else time.sleep(60)"
    t = time.monotonic()
    log = io.StringIO()
    result = launch([sys.executable, "-c", code], 2, grace_s=1.0, log=log)
    assert time.monotonic() - t < 20
    assert "rank 0 exited with code 3; stopping the others" in log.getvalue()
    assert result.first_failed == 0 and result.code == 3
    assert result.stopped == (1,) and result.codes[1] != 0


def test_job_timeout() -> None:
    result = launch([sys.executable, "-c", "import time; time.sleep(60)"], 2, timeout_s=1.0,
                    log=io.StringIO())
    assert result.timed_out and result.code == 1 and result.stopped == (0, 1)
