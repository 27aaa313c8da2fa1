"""Tests for autopipe/profile/_progress.py."""

from __future__ import annotations

import io

from autopipe.profile._progress import Progress


def test_progress_line() -> None:
    out = io.StringIO()
    bar = Progress(3, "measuring", enabled=True, stream=out)
    for name in ("a", "b", "c"):
        bar.step(name)
    bar.close()
    text = out.getvalue()
    assert "measuring: 1/3 nodes (33%)" in text and "3/3 nodes (100%)" in text
    assert text.endswith("\n")


def test_silent_when_not_a_terminal() -> None:
    out = io.StringIO()  # isatty() is False
    bar = Progress(2, "x", stream=out)
    bar.step()
    bar.step()
    bar.close()
    assert out.getvalue() == ""
