"""Where and in what dtype a profile runs: device checks, the module copy, inputs, CPU threads."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

from autopipe._subnormals import flush_subnormals, flushing
from autopipe.errors import ProfileError
from autopipe.profile._copy import cast_input, copy_to, float_dtype, module_tensors
from autopipe.profile._dtypes import parse_dtype
from autopipe.profile._timer import CLOCKS
from autopipe.trace.graph import Graph


@dataclass(slots=True)
class Setup:
    """A graph's module and inputs, on the profiling device and dtype."""

    gm: fx.GraphModule
    """``graph.gm`` itself, or a copy when the device or dtype differ."""
    flat: list[Any]
    """The flat inputs of one micro-batch, moved and cast."""
    device: torch.device
    dtype: torch.dtype
    """The floating dtype profiled."""


def resolve_device(device: str | torch.device) -> torch.device:
    """Check that ``device`` exists here; ``cuda`` becomes the current CUDA device.

    Raises:
        ProfileError: unknown device or no CUDA.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ProfileError(f"unknown device {device!r}", hint="use cpu, cuda, cuda:1 or meta") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ProfileError("--device cuda: no CUDA device is available here",
                               hint="profile on cpu, or estimate with --device meta --device-spec h100")
        index = torch.cuda.current_device() if dev.index is None else dev.index
        if index >= torch.cuda.device_count():
            raise ProfileError(f"cuda:{index} does not exist ({torch.cuda.device_count()} CUDA devices)",
                               hint="pick an index below the device count")
        dev = torch.device("cuda", index)
    elif dev.type not in ("cpu", "meta"):
        raise ProfileError(f"cannot profile on {dev.type}", hint="use cpu, cuda or meta")
    return dev


def setup(graph: Graph, args: tuple[Any, ...], kwargs: dict[str, Any] | None,
          device: torch.device, dtype: str | torch.dtype | None) -> Setup:
    """Put ``graph.gm`` and one micro-batch on ``device`` in ``dtype`` (copying only if needed)."""
    if not isinstance(args, tuple):
        raise ProfileError(f"args must be a tuple, got {type(args).__name__}", hint="wrap one tensor as (x,)")
    traced = float_dtype(graph.gm)
    cast = parse_dtype(dtype)
    if cast == traced and all(t.dtype == cast for t in module_tensors(graph.gm) if t.is_floating_point()):
        cast = None  # already in that dtype
    flat = graph.flat_inputs(args, kwargs)
    on_device = all(t.device == device for t in module_tensors(graph.gm))
    gm = graph.gm if on_device and cast is None else copy_to(graph.gm, device, cast)
    flat = [cast_input(x, device, cast) for x in flat]
    return Setup(gm=gm, flat=flat, device=device, dtype=cast or traced)


def check_counts(warmup: int, repeats: int, clock: str) -> None:
    """Check the timing options of ``measure``.

    Raises:
        ProfileError: negative warm-up, no repeats, unknown clock.
    """
    if warmup < 0 or repeats < 1:
        raise ProfileError(f"warmup = {warmup}, repeats = {repeats}",
                           hint="use warmup >= 0 and repeats >= 1")
    if clock not in CLOCKS:
        raise ProfileError(f"unknown clock {clock!r}", hint=f"use one of {', '.join(CLOCKS)}")


@contextmanager
def cpu_threads(threads: int | None, device: torch.device) -> Iterator[None]:
    """Run with ``threads`` intra-op CPU threads (None: leave as is), restored afterwards."""
    if threads is None or device.type != "cpu":
        yield
        return
    if threads < 1:
        raise ProfileError(f"threads = {threads}", hint="use threads >= 1, or None for torch's default")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def denormals_flushed(device: torch.device) -> Iterator[bool]:
    """On the CPU, treat subnormal floats as zero while timing; afterwards as before (a
    training process that flushes them keeps flushing). Yields whether they are flushed.
    See [Note: subnormals at initialisation]."""
    if device.type != "cpu":
        yield False
        return
    changed = flush_subnormals(True)
    try:
        yield flushing()
    finally:
        if changed:
            flush_subnormals(False)


# [Note: subnormals at initialisation]
# A freshly initialised model can push the CPU onto its slow path for subnormal
# floats: the tied LM's logits at initialisation reach 130 for the input's own token
# (its embedding dotted with itself), so a cross-entropy's exp(x - max) lands among
# subnormals for much of the vocabulary and takes 17 ms a micro-batch where it takes
# 5 ms after one optimizer step (measured here with one thread; the logits' maximum
# falls to 70). Training spends its steps in the second regime, so profiles time on
# the CPU with subnormals flushed to zero (``torch.set_flush_denormal``) and say so in
# their meta (``flush_denormal``); the model's values are untouched.
