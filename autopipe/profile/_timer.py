"""Median time of a callable: CUDA events on GPUs; on CPU the compute thread's CPU time or perf_counter."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

CLOCKS = ("auto", "wall", "thread")


class Timer:
    """Times callables on one device.

    [Note: CPU clocks]
    With one intra-op thread every CPU kernel, forward and backward, runs on the
    calling thread (autograd runs CPU work on the thread that calls it), so that
    thread's CPU time (``time.thread_time``) equals the wall time on an idle machine
    and, unlike ``time.perf_counter``, does not grow when other processes take the
    core away. ``auto`` uses it when torch runs one thread and ``perf_counter``
    otherwise (several threads' work does not add up to wall time).

    Args:
        device: a torch device; CUDA devices are timed with events.
        warmup: untimed runs before the timed ones.
        repeats: timed runs; the median is reported.
        clock: CPU clock: ``auto``, ``wall`` (perf_counter) or ``thread`` (thread CPU time).
    """

    def __init__(self, device: torch.device, *, warmup: int, repeats: int, clock: str = "auto") -> None:
        self.device = device
        self.warmup = warmup
        self.repeats = repeats
        self.cuda = device.type == "cuda"
        if clock == "auto":
            clock = "thread" if torch.get_num_threads() == 1 else "wall"
        self.clock = "cuda-events" if self.cuda else clock
        self._now = time.thread_time if clock == "thread" else time.perf_counter
        self.overhead = 0.0
        """Median time of timing an empty call, subtracted from every median."""
        self.overhead = self.median(lambda: None, warmup=10, repeats=101)

    def median(self, fn: Callable[[], Any], *, warmup: int | None = None,
               repeats: int | None = None, before: Callable[[], Any] | None = None) -> float:
        """Median seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs, less the
        timer's own overhead (never below zero); ``before()``, untimed, precedes each run."""
        warmup = self.warmup if warmup is None else warmup
        repeats = self.repeats if repeats is None else repeats
        samples: list[float] = []
        for i in range(warmup + repeats):
            if before is not None:
                before()
            if i < warmup:
                fn()
            else:
                samples.append(self.sample(fn))
        return max(statistics.median(samples) - self.overhead, 0.0)

    def sample(self, fn: Callable[[], Any]) -> float:
        """Seconds of one run of ``fn()``."""
        if self.cuda:
            start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            torch.cuda.synchronize(self.device)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end)) / 1e3
        t0 = self._now()
        fn()
        return self._now() - t0

    def sync(self) -> None:
        """Wait for the device (a no-op on CPU)."""
        if self.cuda:
            torch.cuda.synchronize(self.device)


def step_clock(device: torch.device) -> Callable[[], float]:
    """A clock for timing a piece of work as a whole on ``device``: on CUDA, wall time after
    waiting for the device (a launch returns before its kernels run); on the CPU, the
    thread's CPU time with one thread ([Note: CPU clocks]), else wall time."""
    if device.type == "cuda":
        def now() -> float:
            torch.cuda.synchronize(device)
            return time.perf_counter()
        return now
    return time.thread_time if torch.get_num_threads() == 1 else time.perf_counter
