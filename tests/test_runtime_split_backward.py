"""Tests for autopipe/runtime/split_backward.py: input gradients first, weight gradients
later, together exactly one backward ([Note: split backward])."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autopipe.runtime.split_backward import backward_input, backward_weight, loss_views


class _SharedMeet(nn.Module):
    """``p`` meets the inputs' part of the graph at two nodes, one of which ``q`` meets too."""

    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Parameter(torch.randn(4, 4))
        self.p = nn.Parameter(torch.randn(4, 4))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (x @ (self.q + self.p) + x * self.p[0],)


class _SentOn(nn.Module):
    """Sends on a value made from weights alone (as T5 does its position bias), and reads
    the embedding it comes from on the input's path too."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(6, 4)
        self.w = nn.Parameter(torch.randn(4, 4))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bias = self.emb(torch.arange(3)) * 2.0
        return (x @ self.w + self.emb.weight[:3].sum(), bias.clone())


class _Nested(nn.Module):
    """``p`` meets the inputs' part at a node and again downstream of it (the second
    node's gradient flows into the first in the weight pass), tied to an output head."""

    def __init__(self) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.randn(4))
        self.w = nn.Parameter(torch.randn(4, 4))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        y = x * self.p
        z = torch.tanh(y @ self.w) * self.p
        return ((z + y).sum(0, keepdim=True) @ torch.diag(self.p),)


@pytest.mark.parametrize("model", [_SharedMeet, _SentOn, _Nested], ids=lambda m: m.__name__)
def test_input_then_weight_pass_is_one_backward(model: type[nn.Module]) -> None:
    torch.manual_seed(0)
    m = model()
    x = torch.randn(3, 4, requires_grad=True)
    outs = m(x)
    grads_out = [torch.randn_like(o) for o in outs]
    params = list(m.parameters())
    expected = torch.autograd.grad(outs, [x, *params], grads_out)

    x2 = x.detach().requires_grad_()
    outs = m(x2)
    dinputs, work = backward_input(outs, grads_out, [x2], m.parameters())
    torch.testing.assert_close(dinputs[0], expected[0])
    torch.testing.assert_close(x2.grad, expected[0])
    assert all(p.grad is None for p in params), "I left the weight gradients to W"
    assert all(o.grad_fn is None for o in outs), "I detached the outputs"
    backward_weight(work)
    for p, e in zip(params, expected[1:]):
        torch.testing.assert_close(p.grad, e)


def test_weight_pass_adds_to_accumulated_gradients() -> None:
    """A second micro-batch adds its weight gradients to the first's."""
    torch.manual_seed(0)
    m = _SentOn()
    xs = [torch.randn(3, 4) for _ in range(2)]
    total = [torch.zeros_like(p) for p in m.parameters()]
    for x in xs:
        outs = m(x.requires_grad_())
        for t, g in zip(total, torch.autograd.grad(outs, list(m.parameters()), [torch.ones_like(o) for o in outs])):
            t += g
    works = []
    for x in xs:
        x2 = x.detach().requires_grad_()
        outs = m(x2)
        works.append(backward_input(outs, [torch.ones_like(o) for o in outs], [x2], m.parameters())[1])
    for work in works:
        backward_weight(work)
    for p, t in zip(m.parameters(), total):
        torch.testing.assert_close(p.grad, t)


def test_a_loss_gets_gradient_one() -> None:
    """The last stage passes its loss and no output gradients."""
    torch.manual_seed(0)
    m = _Nested()
    x = torch.randn(3, 4, requires_grad=True)
    loss = m(x)[0].sum()
    expected = torch.autograd.grad(loss, [x, *m.parameters()])
    x2 = x.detach().requires_grad_()
    dinputs, work = backward_input([m(x2)[0].sum()], None, [x2], m.parameters())
    backward_weight(work)
    torch.testing.assert_close(dinputs[0], expected[0])
    for p, e in zip(m.parameters(), expected[1:]):
        torch.testing.assert_close(p.grad, e)


class _Head(nn.Module):
    """A last stage: a head on what it receives and a learned offset of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 4))
        self.offset = nn.Parameter(torch.randn(4))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x @ self.w, torch.sigmoid(self.offset) * 3.0


@pytest.mark.parametrize("received_grad", [True, False], ids=["reached", "nothing-reached"])
def test_last_stage_weight_pass_after_torch_detaches_its_outputs(received_grad: bool) -> None:
    """torch's last stage detaches the model's outputs in place once I is done, and W runs
    ops of the loss (MSE saves its input) on a path from the loss that no input reaches
    (the offset's; every weight's when nothing received has a gradient): the loss reads
    views of the outputs, and W still runs."""
    torch.manual_seed(0)
    m = _Head()
    x, target = torch.randn(3, 4), torch.randn(3, 4)

    def loss_of(outs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return nn.functional.mse_loss(outs[0], target) + nn.functional.mse_loss(outs[1], target[0])

    expected = torch.autograd.grad(loss_of(m(x)), list(m.parameters()))
    x2 = x.clone().requires_grad_(received_grad)
    outs = m(x2)
    _, work = backward_input([loss_of(loss_views(outs))], None, [x2], m.parameters())
    for out in outs:  # as torch.distributed.pipelining's backward_one_chunk does
        out.detach_()
    backward_weight(work)
    for p, e in zip(m.parameters(), expected):
        torch.testing.assert_close(p.grad, e)
