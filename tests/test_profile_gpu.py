"""GPU tests for autopipe/profile/measure.py: CUDA events, the model copy, max_memory_allocated."""

from __future__ import annotations

import pytest
import torch

import autopipe
from autopipe import ModelSpec
from autopipe.profile import estimate, load_device_spec, measure

Traced = dict[str, tuple[ModelSpec, autopipe.Graph]]
pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("name", ["mlp", "gpt2"])
def test_measure_on_cuda(traced: Traced, name: str) -> None:
    spec, graph = traced[name]  # the model lives on the CPU: measure runs a CUDA copy
    p = measure(graph, spec.example_inputs, spec.example_kwargs, device="cuda", warmup=1, repeats=3)
    assert p.device == "cuda:" + torch.cuda.get_device_name()
    assert p.meta["clock"] == "cuda-events"
    whole = p.meta["whole_model"]
    assert abs(p.activation_bytes - whole["activation_bytes"]) <= 0.05 * whole["activation_bytes"]
    # what the allocator saw at its peak holds at least the saved activations
    assert whole["peak_bytes"] >= 0.9 * whole["activation_bytes"]
    assert p.forward_s > 0 and p.backward_s > 0
    assert all(q.device.type == "cpu" for q in spec.model.parameters())
    assert all(q.grad is None for q in spec.model.parameters())


def test_backward_halves_on_cuda(traced: Traced) -> None:
    spec, graph = traced["mlp"]
    p = measure(graph, spec.example_inputs, device="cuda", warmup=1, repeats=3)
    lin, gelu = p.by_name["blocks_1_0"], p.by_name["blocks_1_1"]
    assert lin.backward_input_s > 0 and lin.backward_weight_s > 0
    assert gelu.backward_weight_s == 0


def test_bf16_on_cuda_against_estimate(traced: Traced) -> None:
    spec, graph = traced["llama"]
    p = measure(graph, spec.example_inputs, device="cuda", dtype="bf16", warmup=1, repeats=3)
    e = estimate(graph, spec.example_inputs, dtype="bf16")
    assert p.dtype == e.dtype == "bfloat16"
    assert p.activation_bytes == pytest.approx(e.activation_bytes, rel=0.25)


def test_the_libraries_workspaces_on_cuda(traced: Traced) -> None:
    """[Note: the libraries' workspaces]: a measured profile carries two threads' cuBLAS
    workspaces (and cuBLASLt's, where a biased linear takes that path), the size the
    device specs give; once made, a training step's matmuls allocate no more of them."""
    spec, graph = traced["mlp"]
    p = measure(graph, spec.example_inputs, device="cuda", warmup=1, repeats=3)
    hopper = torch.cuda.get_device_capability() == (9, 0)
    cublas = 32 * 2**20 if hopper else 8 * 2**20 + 128 * 2**10
    # cuBLASLt's 1 MiB on each thread whose matmuls take that path (the biased forward's)
    assert 2 * cublas <= p.library_bytes <= 2 * (cublas + 2**20)
    if hopper:
        assert p.library_bytes <= load_device_spec("h100").library_bytes
    model = torch.nn.Linear(256, 256).cuda()
    x = torch.randn(64, 256, device="cuda", requires_grad=True)
    torch.autograd.grad(model(x).sum(), (x, *model.parameters()))  # workspaces exist now
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    grads = torch.autograd.grad(model(x).sum(), (x, *model.parameters()))
    torch.cuda.synchronize()
    del grads
    assert torch.cuda.memory_allocated() == before
