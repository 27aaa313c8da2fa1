"""Median wall time of a callable: perf_counter on CPU, CUDA events with synchronisation on GPUs."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


class Timer:
    """Times callables on one device.

    Args:
        device: a torch device; CUDA devices are timed with events.
        warmup: untimed runs before the timed ones.
        repeats: timed runs; the median is reported.
    """

    def __init__(self, device: torch.device, *, warmup: int, repeats: int) -> None:
        self.device = device
        self.warmup = warmup
        self.repeats = repeats
        self.cuda = device.type == "cuda"

    def median(self, fn: Callable[[], Any]) -> float:
        """Median seconds of ``fn()`` over ``repeats`` runs, after ``warmup`` runs."""
        for _ in range(self.warmup):
            fn()
        return statistics.median(self.sample(fn) for _ in range(self.repeats))

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
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def sync(self) -> None:
        """Wait for the device (a no-op on CPU)."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
