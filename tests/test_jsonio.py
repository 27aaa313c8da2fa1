"""Tests for autopipe/_jsonio.py: where ``atomic_output`` writes when the path is not a plain file."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest

from autopipe._jsonio import atomic_output, write_json_atomic


def test_plain_file_is_replaced_and_no_temp_file_is_left(tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    out.write_text("old")
    write_json_atomic(out, {"a": 1})
    assert json.loads(out.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]


def test_symlink_is_followed_and_kept(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "plan.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    write_json_atomic(link, {"a": 1})
    assert link.is_symlink() and link.resolve() == target
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "real"]
    assert [p.name for p in target.parent.iterdir()] == ["plan.json"]


def test_dangling_symlink_makes_its_target(tmp_path: Path) -> None:
    link = tmp_path / "link.json"
    link.symlink_to("made.json")
    write_json_atomic(link, {"a": 1})
    assert link.is_symlink()
    assert json.loads((tmp_path / "made.json").read_text()) == {"a": 1}


def test_fifo_is_written_into_not_replaced(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    write_json_atomic(fifo, {"a": 1})
    reader.join(timeout=10)
    assert not reader.is_alive()
    assert json.loads(got[0]) == {"a": 1}
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert [p.name for p in tmp_path.iterdir()] == ["pipe"]


def test_dev_null_stays_a_device() -> None:
    if not os.access("/dev/null", os.W_OK):
        pytest.skip("/dev/null is not writable here")
    # checked before anything is written: were a temp file yielded, the error raised here
    # removes it and nothing is renamed over /dev/null (as root it would be replaced)
    with atomic_output("/dev/null") as tmp:
        assert tmp == "/dev/null"
        with open(tmp, "wb") as f:
            f.write(b"x")
    write_json_atomic("/dev/null", {"a": 1})
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)
