"""Whole-model forward+backward of one micro-batch: the reference per-node profiles are checked against."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.fx as fx

from autopipe.profile._copy import fresh_inputs, module_tensors
from autopipe.profile._saved import SavedBytes
from autopipe.profile._setup import (
    check_counts,
    cpu_threads,
    denormals_flushed,
    resolve_device,
    setup,
)
from autopipe.profile._timer import Timer
from autopipe.trace._state import buffers_restored
from autopipe.trace.graph import Graph


@dataclass(frozen=True, slots=True, kw_only=True)
class WholeModel:
    """One micro-batch through the whole model, timed as one piece."""

    forward_s: float
    """Median forward time."""
    backward_s: float
    """Median backward time (gradients of all parameters, outputs seeded with ones)."""
    forward_backward_s: float
    """Median of forward + backward, run after run."""
    activation_bytes: int
    """Bytes saved for backward by the forward, counted with the per-node hooks."""
    peak_bytes: int | None = None
    """CUDA only: ``max_memory_allocated`` during forward+backward, above what was allocated before."""

    def to_json(self) -> dict[str, Any]:
        """A plain dict (for Profile.meta)."""
        return asdict(self)


def measure_whole(graph: Graph, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None, *,
                  device: str = "cpu", dtype: str | None = None, warmup: int = 2, repeats: int = 5,
                  threads: int | None = 1, clock: str = "auto") -> WholeModel:
    """Time a whole-model forward+backward and count its saved bytes, as ``measure`` would.

    Raises:
        ProfileError: bad device, dtype or inputs.
    """
    check_counts(warmup, repeats, clock)
    dev = resolve_device(device)
    s = setup(graph, args, kwargs, dev, dtype)
    with cpu_threads(threads, dev), denormals_flushed(dev), buffers_restored(s.gm), torch.enable_grad():
        return run_whole(s.gm, s.flat, Timer(dev, warmup=warmup, repeats=repeats, clock=clock))


def run_whole(gm: fx.GraphModule, flat: list[Any], timer: Timer) -> WholeModel:
    """``measure_whole`` on a module and inputs already on the timer's device."""
    params = [p for p in gm.parameters() if p.requires_grad]

    def forward(inputs: list[Any]) -> list[torch.Tensor]:
        outs = gm(*inputs)
        return [t for t in outs if isinstance(t, torch.Tensor) and t.requires_grad]

    def backward(outs: list[torch.Tensor]) -> None:
        if outs and params:
            # autograd.grad, not .backward(): the user's .grad fields stay untouched
            torch.autograd.grad(outs, params, [torch.ones_like(t) for t in outs], allow_unused=True)

    # every run on its own copies of the inputs, which the model may write in place
    for _ in range(timer.warmup):
        backward(forward(fresh_inputs(flat)))
    fwd: list[float] = []
    bwd: list[float] = []
    box: list[list[torch.Tensor]] = []
    ready: list[list[Any]] = []
    for _ in range(timer.repeats):
        ready.append(fresh_inputs(flat))
        fwd.append(timer.sample(lambda: box.append(forward(ready.pop()))))
        bwd.append(timer.sample(lambda: backward(box.pop())))
    saved = SavedBytes(exclude=module_tensors(gm))
    peak: int | None = None
    if timer.cuda:
        torch.cuda.synchronize(timer.device)
        torch.cuda.reset_peak_memory_stats(timer.device)
        base = torch.cuda.memory_allocated(timer.device)
    inputs = fresh_inputs(flat)
    with saved.count():
        outs = forward(inputs)
    backward(outs)
    if timer.cuda:
        torch.cuda.synchronize(timer.device)
        peak = int(torch.cuda.max_memory_allocated(timer.device) - base)
    del outs
    saved.release()
    return WholeModel(
        forward_s=statistics.median(fwd), backward_s=statistics.median(bwd),
        forward_backward_s=statistics.median(f + b for f, b in zip(fwd, bwd)),
        activation_bytes=saved.total, peak_bytes=peak)
