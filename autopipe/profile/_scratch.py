"""What a call takes and hands back before it returns, read from an allocator's counters.

[Note: a call's scratch]
The plans' memory counts what a stage keeps: parameters, gradients, optimizer state,
saved activations, the loss's workspace. Some kernels also take memory for the length
of one call and free it before returning: a cuDNN convolution takes a workspace from
PyTorch's caching allocator (on the H200 the convolution nets peaked 1.19 of their
plans in training, and 1.20–1.28 over their saved bytes in one forward and backward:
docs/gpu.md). Around a call, the allocator's host-side counters tell it without a
synchronisation:

    scratch = peak allocated during the call − max(allocated before, allocated after)

which is what the call held at its peak beyond what it keeps (outputs, saved tensors,
returned gradients). A stage holds the largest scratch of its nodes' calls, one call
at a time, on top of its activations. The CPU has no such counters (and its kernels'
scratch comes from their own allocators), so CPU profiles and estimates carry none.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import torch

T = TypeVar("T")


class Counters(Protocol):
    """An allocator's counters: bytes allocated now, the most since the last reset."""

    def allocated(self) -> int: ...

    def peak(self) -> int: ...

    def reset_peak(self) -> None: ...


@dataclass(frozen=True)
class CudaCounters:
    """``torch.cuda``'s caching-allocator counters of one device."""

    device: torch.device

    def allocated(self) -> int:
        return int(torch.cuda.memory_allocated(self.device))

    def peak(self) -> int:
        return int(torch.cuda.max_memory_allocated(self.device))

    def reset_peak(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)


def counters_for(device: torch.device) -> Counters | None:
    """The counters of ``device``'s allocator, where it has them (CUDA); else None."""
    return CudaCounters(device) if device.type == "cuda" else None


def with_scratch(counters: Counters, fn: Callable[[], T]) -> tuple[T, int]:
    """``fn()`` and the scratch it took ([Note: a call's scratch])."""
    before = counters.allocated()
    counters.reset_peak()
    out = fn()
    return out, max(0, counters.peak() - max(before, counters.allocated()))


