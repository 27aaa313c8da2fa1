"""Tests for autopipe/runtime/kernels.py: a graph traced on meta runs on CPU ranks where it
holds an op the CPU has no kernel for in the traced dtype ([Note: the meta branch's histc])."""

from __future__ import annotations

import dataclasses

import torch

from autopipe import trace
from autopipe.runtime import build
from autopipe.runtime.kernels import histc

from .runtime_plans import plan_from_cuts
from .zoo import ZOO


def test_an_integer_histc_counts_as_its_float_values_do() -> None:
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.int32, torch.int64, torch.uint8):
        ids = torch.randint(0, 8, (257,), generator=g).to(dtype)
        counts = histc(ids, bins=8, min=0, max=7)
        assert counts.dtype == dtype
        assert torch.equal(counts.long(), torch.bincount(ids.long(), minlength=8))
        assert torch.equal(counts, torch.histc(ids.float(), 8, 0, 7).to(dtype))
    x = torch.randn(100, generator=g)
    assert torch.equal(histc(x, bins=5, min=-1, max=1), torch.histc(x, 5, -1, 1))


def test_a_moe_built_on_meta_trains_on_a_cpu_rank() -> None:
    """transformers' grouped_mm experts traced on meta hold an int32 histc; before the mend
    the first step stopped with '"histogram_cpu" not implemented for 'Int''."""
    spec = ZOO["mixtral"]()
    model = spec.model
    with torch.device("meta"):
        meta = type(model)(model.config)
    graph = trace(meta, spec.example_inputs)
    assert any(n.target is torch.ops.aten.histc.default for n in graph.gm.graph.nodes)
    meta_spec = dataclasses.replace(spec, model=meta, init_weights=meta._init_weights)
    inputs, target = spec.batch(2, 0)
    with build(plan_from_cuts(graph, [], microbatches=2), meta_spec, device="cpu", init=model.state_dict()) as pipe:
        losses = pipe.step(inputs, target)
        grads = {k: p.grad for k, p in pipe.named_parameters()}
    for x, t in zip(*(torch.tensor_split(v, 2) for v in (inputs[0], target))):
        (spec.loss_fn(model(x), t) / 2).backward()
    want = [spec.loss_fn(model(x), t) for x, t in zip(*(torch.tensor_split(v, 2) for v in (inputs[0], target)))]
    torch.testing.assert_close(torch.stack(losses), torch.stack(want).detach())
    for k, p in model.named_parameters():
        torch.testing.assert_close(grads[k], p.grad, msg=lambda m, k=k: f"{k}: {m}")
