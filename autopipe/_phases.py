"""Where planning time goes: named phases, timed only while someone records them.

``benchmarks/bench_plan_speed.py`` wraps a whole ``autopipe plan`` in ``record()``;
the library marks its phases with ``phase("trace.export")`` and friends. Outside a
recording a phase costs one context-variable lookup.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass(slots=True)
class Phases:
    """Seconds per phase name (wall and CPU of this process), summed over its entries."""

    wall: dict[str, float] = field(default_factory=dict)
    """Wall-clock seconds per phase."""
    cpu: dict[str, float] = field(default_factory=dict)
    """CPU seconds of this process per phase (all its threads)."""


_RECORDING: contextvars.ContextVar[Phases | None] = contextvars.ContextVar("autopipe_phases", default=None)


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Time the block as phase ``name`` when a recording is on (nested phases count in both)."""
    rec = _RECORDING.get()
    if rec is None:
        yield
        return
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        rec.wall[name] = rec.wall.get(name, 0.0) + time.perf_counter() - wall
        rec.cpu[name] = rec.cpu.get(name, 0.0) + time.process_time() - cpu


@contextlib.contextmanager
def record() -> Iterator[Phases]:
    """Record the phases run inside this block."""
    rec = Phases()
    token = _RECORDING.set(rec)
    try:
        yield rec
    finally:
        _RECORDING.reset(token)
