"""Flushing subnormal floats to zero on the CPU (autopipe/runtime/subnormals.py)."""

from __future__ import annotations

import threading

import pytest
import torch

from autopipe.runtime.subnormals import flush_subnormals, flushing


@pytest.fixture(autouse=True)
def _unflushed() -> None:
    flush_subnormals(False)
    yield
    flush_subnormals(False)


def test_it_turns_on_and_off_and_says_whether_it_changed_anything() -> None:
    tiny = torch.tensor([1e-39])
    assert not flushing() and (tiny * 1.0).item() > 0.0
    assert flush_subnormals(True)
    assert flushing() and (tiny * 1.0).item() == 0.0
    assert not flush_subnormals(True)  # already on
    assert flush_subnormals(False)
    assert not flushing() and not flush_subnormals(False)


def test_threads_started_afterwards_flush_too() -> None:
    flush_subnormals(True)
    seen: list[bool] = []
    thread = threading.Thread(target=lambda: seen.append(flushing()))
    thread.start()
    thread.join()
    assert seen == [True]
