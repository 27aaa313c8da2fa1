"""Tests for the checks of autopipe/runtime/checkpoint.py: steps past 999999.

Run in this process, without starting ranks; tests/test_runtime_checkpoint.py runs the gloo jobs.
"""

from __future__ import annotations

from pathlib import Path

from autopipe.runtime import find_checkpoint
from autopipe.runtime.checkpoint import _commit

# --- steps past 999999 ---------------------------------------------------------------------------


def _fake(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / ".metadata").write_bytes(b"")
    (folder / "autopipe.json").write_text("{}")
    return folder


def test_steps_past_999999_sort_as_numbers(tmp_path: Path) -> None:
    for step in (999999, 1000000):
        _fake(tmp_path / f"step-{step:06d}")
    assert find_checkpoint(tmp_path) == tmp_path / "step-1000000"  # no `latest`: the highest step
    # saving step 1000002 keeps the two newest, 1000000 and 1000002 (not 999999)
    partial = _fake(tmp_path / ".step-1000002.partial")
    _commit(tmp_path, partial, tmp_path / "step-1000002", keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-1000000", "step-1000002"]
