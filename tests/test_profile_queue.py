"""Tests for autopipe/profile/_queue.py: the launch queue's max-plus arithmetic."""

from __future__ import annotations

import pytest

from autopipe.profile._queue import LaunchQueue, queue_seconds, replay, replay_training


def test_host_bound_chain() -> None:
    # ten calls of 10 µs host time, each a 1 µs kernel: the GPU waits for the host
    calls = [(10e-6, 1e-6)] * 10
    assert queue_seconds(calls) == pytest.approx(10 * 10e-6 + 1e-6)


def test_device_bound_chain() -> None:
    # the host issues everything early; the GPU runs the kernels back to back
    calls = [(1e-6, 50e-6)] * 4
    assert queue_seconds(calls) == pytest.approx(1e-6 + 4 * 50e-6)


def test_max_plus_by_hand() -> None:
    q = LaunchQueue()
    q.issue(2.0, 5.0)   # issued at 2, runs 2..7
    q.issue(1.0, None)  # a view: host to 3, no kernel
    q.issue(1.0, 1.0)   # issued at 4, waits for the GPU: 7..8
    q.issue(6.0, 1.0)   # issued at 10, GPU idle since 8: 10..11
    assert (q.host, q.device) == (10.0, 11.0)
    assert q.done == 11.0
    q.issue(3.0, None)  # host-only work after the last kernel
    assert q.done == 13.0


def test_views_cost_host_time_only() -> None:
    assert queue_seconds([(3.0, None)] * 4) == 12.0
    assert queue_seconds([]) == 0.0


def test_shares_sum_to_the_whole_queue() -> None:
    a = [(1.0, 8.0)]           # device-bound: leaves the GPU busy
    b = [(1.0, None)] * 5      # host work, hidden under a's kernel
    c = [(1.0, 1.0)]
    shares = replay([a, b, c])
    assert shares == [9.0, 0.0, 1.0]
    assert sum(shares) == queue_seconds(a + b + c)
    # each alone from an idle queue sums to more: the overlap is what the shares keep
    assert sum(queue_seconds(s) for s in (a, b, c)) == 9.0 + 5.0 + 2.0


def test_backward_runs_in_reverse() -> None:
    first = ([(1.0, None)], [(1.0, 10.0)])   # forward: host only; backward: a long kernel
    second = ([(1.0, 1.0)], [(1.0, None)] * 3)
    (f1, b1), (f2, b2) = replay_training([first, second])
    assert (f1, f2) == (1.0, 2.0)
    # the backward issues second's host calls (3), then first's kernel (issued at 4, ends 14)
    assert (b2, b1) == (3.0, 11.0)
