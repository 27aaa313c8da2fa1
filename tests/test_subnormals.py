"""Flushing subnormal floats to zero on the CPU (autopipe/_subnormals.py), for profiles and training."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import torch

from autopipe._subnormals import flush_subnormals, flushing
from autopipe.profile._setup import denormals_flushed


@pytest.fixture(autouse=True)
def _unflushed() -> Iterator[None]:
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


def test_profiling_leaves_a_flushing_thread_flushing_and_an_unflushed_one_unflushed() -> None:
    cpu = torch.device("cpu")
    with denormals_flushed(cpu) as flushed:
        assert flushed and flushing()
    assert not flushing()
    flush_subnormals(True)  # as a CPU rank's build does
    with denormals_flushed(cpu) as flushed:
        assert flushed
    assert flushing()
