"""Allocator counters that a test op drives, and ops that take scratch: the CPU's stand-in
for a cuDNN call's workspace ([Note: a call's scratch] in ``autopipe.profile._scratch``)."""

from __future__ import annotations

import torch

FORWARD_SCRATCH = 3 << 20
BACKWARD_SCRATCH = 5 << 20
GLUE_SCRATCH = 7 << 20
"""Taken by the backward's Python between its calls: no aten call's, but the node's."""


class FakeCounters:
    """An allocator's counters; ``take(n)``: n bytes taken and handed back within a call."""

    def __init__(self) -> None:
        self.now = 1000
        self.high = self.now

    def allocated(self) -> int:
        return self.now

    def peak(self) -> int:
        return self.high

    def reset_peak(self) -> None:
        self.high = self.now

    def take(self, n: int) -> None:
        self.high = max(self.high, self.now + n)


COUNTERS = FakeCounters()


@torch.library.custom_op("autopipe_test::scratchy", mutates_args=())
def scratchy(x: torch.Tensor) -> torch.Tensor:
    """2x, taking ``FORWARD_SCRATCH`` bytes while it runs."""
    COUNTERS.take(FORWARD_SCRATCH)
    return x * 2


@torch.library.custom_op("autopipe_test::scratchy_backward", mutates_args=())
def scratchy_backward(grad: torch.Tensor) -> torch.Tensor:
    """``scratchy``'s backward, taking ``BACKWARD_SCRATCH`` bytes while it runs."""
    COUNTERS.take(BACKWARD_SCRATCH)
    return grad * 2


@scratchy.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


@scratchy_backward.register_fake
def _(grad: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(grad)


def _backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
    COUNTERS.take(GLUE_SCRATCH)
    return scratchy_backward(grad)


scratchy.register_autograd(_backward)
