"""benchmarks/op_scratch.py: each aten call's scratch, read from allocator counters around it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.op_scratch import op_scratch
from tests.scratch_ops import BACKWARD_SCRATCH, COUNTERS, FORWARD_SCRATCH, scratchy


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
    assert top == [{"op": "scratchy_backward", "bytes": BACKWARD_SCRATCH, "calls": 1},
                   {"op": "scratchy", "bytes": FORWARD_SCRATCH, "calls": 1}]
    assert net.lin.weight.grad is None  # the model's gradients are left alone


def test_no_counters_on_the_cpu() -> None:
    net = Net()
    assert op_scratch(net, (torch.randn(3, 4),), None, F.mse_loss, torch.zeros(3, 4)) == []
