"""benchmarks/op_scratch.py: each aten call's scratch, read from allocator counters around it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.op_scratch import op_scratch


class FakeCounters:
    """Allocator counters that a test op drives: ``take(n)`` is n bytes taken and handed back."""

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
    COUNTERS.take(3 << 20)  # a workspace of 3 MiB, as a cuDNN call takes one
    return x * 2


@torch.library.custom_op("autopipe_test::scratchy_backward", mutates_args=())
def scratchy_backward(grad: torch.Tensor) -> torch.Tensor:
    COUNTERS.take(5 << 20)
    return grad * 2


def _backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
    COUNTERS.take(7 << 20)  # between calls: no call's scratch
    return scratchy_backward(grad)


scratchy.register_autograd(_backward)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return scratchy(self.lin(x))  # its backward is on the way to the weights


def test_scratch_is_charged_to_the_call_that_took_it() -> None:
    net = Net()
    x = torch.randn(3, 4, requires_grad=True)
    top = op_scratch(net, (x,), None, F.mse_loss, torch.zeros(3, 4), counters=COUNTERS)
    # each op is charged what its own call took; Python between calls is no call's
    assert top == [{"op": "scratchy_backward", "bytes": 5 << 20, "calls": 1},
                   {"op": "scratchy", "bytes": 3 << 20, "calls": 1}]
    assert net.lin.weight.grad is None  # the model's gradients are left alone


def test_no_counters_on_the_cpu() -> None:
    net = Net()
    assert op_scratch(net, (torch.randn(3, 4),), None, F.mse_loss, torch.zeros(3, 4)) == []
