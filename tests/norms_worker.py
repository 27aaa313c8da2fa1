"""Run by tests/test_runtime_norms.py in a process of its own (torch's crash is a
segmentation fault): ``python -m tests.norms_worker``. Splits ChannelsLastGroupNorm
after its convolution for zb-h1, with and without the norm recomputed, runs the split
backward and checks loss and gradients against the model, on 4 x 4 and on 1 x 1 feature maps;
then measures the model's profile (which times the norm's weight pass alone); prints one line
per case."""

from __future__ import annotations

import dataclasses
import itertools

import torch

import autopipe
from autopipe.profile.measure import measure
from autopipe.runtime.split import split_graph

from .models import ChannelsLastGroupNorm
from .runtime_cases import pipeline_backward
from .runtime_plans import plan_from_cuts


def main() -> None:
    torch.manual_seed(0)
    model = ChannelsLastGroupNorm()
    # 4 x 4 maps, and 1 x 1 ones, whose channels-last strides is_contiguous() accepts
    for x, frontend in itertools.product((torch.randn(2, 3, 4, 4), torch.randn(2, 3, 1, 1)), ("fx", "export")):
        _check(model, x, frontend)
    # the profiler times the norm's weight pass alone too (Mask2Former crashed measure so)
    for frontend in ("fx", "export"):
        x = torch.randn(2, 3, 1, 1)
        graph = autopipe.trace(model, (x,), frontend=frontend)
        measured = measure(graph, (x,), warmup=0, repeats=1, progress=False)
        norm = next(n for n in measured.nodes if n.name in ("norm", "group_norm"))
        print(f"measured {frontend}: {'timed' if norm.backward_s > 0 else 'untimed'}", flush=True)


def _check(model: ChannelsLastGroupNorm, x: torch.Tensor, frontend: str) -> None:
    loss_ref = model(x).pow(2).sum()
    grads = torch.autograd.grad(loss_ref, list(model.parameters()))
    graph = autopipe.trace(model, (x,), frontend=frontend)
    names = [n.name for n in graph.nodes]
    plan = plan_from_cuts(graph, [next(i for i, name in enumerate(names) if name.startswith("conv"))],
                          schedule="zb-h1", ranks=[0, 1])
    last = plan.stages[1]
    norm = tuple(n for n in last.nodes if n in ("norm", "group_norm", "mean"))
    recomputed = dataclasses.replace(plan, stages=(plan.stages[0], dataclasses.replace(last, recompute=(norm,))))
    for case, p in (("", plan), (" recomputed", recomputed)):
        for param in graph.gm.parameters():
            param.grad = None
        loss = pipeline_backward(split_graph(graph, p), [x], lambda outs: outs[0].pow(2).sum(),
                                 split_backward=True)
        torch.testing.assert_close(loss, loss_ref)
        for param, ref in zip(graph.gm.parameters(), grads):
            torch.testing.assert_close(param.grad, ref)
        print(f"{tuple(x.shape[2:])} {frontend}{case}: equal", flush=True)


if __name__ == "__main__":
    main()
