"""Tests for autopipe/runtime/norms.py: a group norm on a channels-last input survives the
zero-bubble weight pass ([Note: group norm in a weight pass]), and a batch norm whose input
and gradient a cut lays out differently gets its gradients right ([Note: batch norm
gradients laid out like its output])."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest
import torch

import autopipe
from autopipe._dense import dense_on_cpu
from autopipe.runtime.norms import grad_like_output
from autopipe.runtime.split import split_graph

from .conftest import ROOT
from .runtime_cases import pipeline_backward
from .runtime_plans import plan_from_cuts


def test_dense_on_cpu_copies_only_what_has_other_strides() -> None:
    for shape in ((2, 8, 4, 4), (2, 8, 1, 1)):
        x = torch.randn(shape)
        assert dense_on_cpu(x) is x
        y = x.to(memory_format=torch.channels_last)
        dense = dense_on_cpu(y)
        assert dense is not y and dense.stride() == x.stride() and torch.equal(dense, y)


def test_a_channels_last_group_norm_survives_the_weight_pass() -> None:
    """Split before the norm for zb-h1 (its weight pass asks the norm for its weight's
    gradient alone), with and without the norm recomputed, on 4 x 4 and 1 x 1 maps: loss and
    gradients as in the model; and measuring its profile times the norm's weight pass. Without the guard torch's CPU kernel kills the process (a segmentation fault),
    so the stages run in a process of their own."""
    out = subprocess.run([sys.executable, "-m", "tests.norms_worker"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, f"exit code {out.returncode}\n{out.stdout}\n{out.stderr[-3000:]}"
    cases = [f"{size} {frontend}{recomputed}: equal" for size in ("(4, 4)", "(1, 1)")
             for frontend in ("fx", "export") for recomputed in ("", " recomputed")]
    assert out.stdout.split("\n")[:10] == [*cases, "measured fx: timed", "measured export: timed"]


class _TransposedBatchNorm(torch.nn.Module):
    """CLAP's audio encoder: a batch norm over the mel bins of (batch, 1, frames, mel)
    features transposed to channels and back, its output then written in place."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = torch.nn.BatchNorm2d(16)
        self.head = torch.nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn(x.transpose(1, 3)).mul_(2.0)
        return self.head(h.transpose(1, 3)).mean((1, 2))


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_a_batch_norm_cut_from_its_layout_gets_its_gradients_right(frontend: str) -> None:
    """Cut anywhere (1F1B's backward and zero-bubble's split one): the stages' loss, every
    gradient and the running statistics are the model's. Before the guard, cuts after the
    first transpose (the batch norm receives its input contiguous) and after the batch norm
    (its output's gradient arrives contiguous) gave wrong weight and bias gradients."""
    torch.manual_seed(0)
    model = _TransposedBatchNorm()
    x = torch.randn(2, 1, 64, 16)
    graph = autopipe.trace(model, (x,), frontend=frontend)
    gm = graph.gm
    start = {k: v.clone() for k, v in gm.named_buffers()}
    expected = gm(x)[0].square().sum()
    grads = torch.autograd.grad(expected, list(gm.parameters()))
    stats = {k: v.clone() for k, v in gm.named_buffers()}
    cuts = range(1, len(graph.nodes) - 2)  # after each node between the input and the output
    for cut, split_backward in itertools.product(cuts, (False, True)):
        where = f"cut after {graph.nodes[cut].name}{', split backward' if split_backward else ''}"
        with torch.no_grad():
            for k, v in gm.named_buffers():
                v.copy_(start[k])
        for p in gm.parameters():
            p.grad = None
        plan = (plan_from_cuts(graph, [cut], schedule="zb-h1", ranks=[0, 1]) if split_backward
                else plan_from_cuts(graph, [cut]))
        loss = pipeline_backward(split_graph(graph, plan), [x], lambda outs: outs[0].square().sum(),
                                 split_backward=split_backward)
        torch.testing.assert_close(loss, expected, msg=lambda m, where=where: f"{where}: {m}")
        for (name, p), ref in zip(gm.named_parameters(), grads):
            torch.testing.assert_close(p.grad, ref, msg=lambda m, where=where, name=name: f"{where}: {name}: {m}")
        for k, v in gm.named_buffers():
            torch.testing.assert_close(v, stats[k], msg=lambda m, where=where, k=k: f"{where}: {k}: {m}")


@pytest.mark.parametrize("shape, relaid", [((2, 1, 64, 16), True), ((2, 16, 8, 8), False)])
def test_only_a_batch_norm_output_with_a_dimension_of_one_has_its_gradient_relaid(
        shape: tuple[int, ...], relaid: bool) -> None:
    """A channels-last gradient reaches a contiguous output laid out like it only where the
    output has a dimension of size 1 (the kernel's wrong case); elsewhere it arrives as the
    whole graph would hand it (LeViT's stem: relaid, its gradients rounded otherwise)."""
    seen: list[torch.Tensor] = []
    x = torch.randn(shape, requires_grad=True)
    y = grad_like_output(x * 1.0)
    y.register_hook(seen.append)  # runs after the guard's hook: what the batch norm gets
    g = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    if shape[1] == 1:  # channels-last of a 1-channel map is contiguous: transpose instead
        g = torch.randn(shape[0], shape[3], shape[2], shape[1]).transpose(1, 3)
    y.backward(g)
    assert torch.equal(seen[0], g)
    assert (seen[0].stride() == y.stride()) is relaid
