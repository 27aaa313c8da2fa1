"""Tests for autopipe/profile/_cost.py: pricing kernels on a roofline."""

from __future__ import annotations

import pytest
import torch

from autopipe.profile import DeviceSpec
from autopipe.profile._cost import CostMode

SPEC = DeviceSpec(name="toy", peak_flops={"float32": 1e12, "bfloat16": 4e12},
                  memory_bandwidth=1e11, memory=2**30, link_bandwidth=1e10, kernel_overhead_s=1e-6)


def _price(fn: object, *tensors: torch.Tensor) -> CostMode:
    mode = CostMode(SPEC)
    with mode:
        fn(*tensors)  # type: ignore[operator]
    return mode


def test_matmul_is_compute_bound() -> None:
    a = torch.empty(1024, 1024, device="meta")
    m = _price(lambda x: x @ x, a)
    assert m.flops == 2 * 1024**3 and m.kernels == 1
    assert m.bytes == 3 * 1024 * 1024 * 4
    assert m.seconds == pytest.approx(2 * 1024**3 / 1e12 + 1e-6)


def test_dtype_picks_the_rate() -> None:
    a = torch.empty(1024, 1024, device="meta", dtype=torch.bfloat16)
    m = _price(lambda x: x @ x, a)
    assert m.seconds == pytest.approx(2 * 1024**3 / 4e12 + 1e-6)


def test_elementwise_is_memory_bound() -> None:
    a = torch.empty(1 << 20, device="meta")
    m = _price(lambda x: x * 2 + 1, a)
    assert m.flops == 0 and m.kernels == 2
    assert m.bytes == 2 * 2 * (1 << 20) * 4  # each op reads and writes 4 MiB
    assert m.seconds == pytest.approx(m.bytes / 1e11 + 2e-6)


def test_views_and_allocations_are_free() -> None:
    a = torch.empty(64, 64, device="meta")
    m = _price(lambda x: (x.t(), x.view(-1), x[3:], torch.empty_like(x)), a)
    assert m.kernels == 0 and m.bytes == 0 and m.seconds == 0


def test_embedding_reads_only_the_rows_it_gathers() -> None:
    weight = torch.empty(50_000, 128, device="meta")
    ids = torch.zeros(4, 16, dtype=torch.long, device="meta")
    m = _price(torch.nn.functional.embedding, ids, weight)
    out = 4 * 16 * 128 * 4
    assert m.bytes == ids.numel() * 8 + 2 * out


def test_composite_ops_are_priced_by_their_kernels() -> None:
    x = torch.empty(8, 32, device="meta")
    w = torch.empty(16, 32, device="meta")
    m = _price(torch.nn.functional.linear, x, w)
    assert m.flops == 2 * 8 * 32 * 16


def test_every_call_costs_the_host_views_included() -> None:
    a = torch.empty(64, 64, device="meta")
    mode = CostMode(SPEC, host_s=1e-3)
    with mode:
        (a.t(), a.view(-1), a * 2)
    assert len(mode.calls) == 3 and mode.kernels == 1
    assert [d is None for _, d in mode.calls] == [True, True, False]
    assert mode.seconds == pytest.approx(3e-3 + 64 * 64 * 4 * 2 / 1e11 + 1e-6)


def _conv_seconds(spec: DeviceSpec, dtype: torch.dtype = torch.float32) -> float:
    x = torch.empty(8, 64, 32, 32, device="meta", dtype=dtype)
    w = torch.empty(64, 64, 3, 3, device="meta", dtype=dtype)
    mode = CostMode(spec)
    with mode:
        torch.nn.functional.conv2d(x, w, padding=1)
    return mode.seconds


def test_fp32_convolutions_run_as_tf32_as_cudnn_does(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = DeviceSpec(name="tc", peak_flops={"float32": 1e12, "tf32": 8e12, "bfloat16": 16e12},
                      memory_bandwidth=1e15, memory=2**30, link_bandwidth=1e10,
                      efficiency={"convolution": {"tf32": 0.5, "bfloat16": 0.25}},
                      call_overhead_s={"convolution": 1e-5})
    flops = 2 * 8 * 32 * 32 * 64 * 64 * 9
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert _conv_seconds(spec) == pytest.approx(flops / 4e12 + 1e-5, rel=1e-3)
    assert _conv_seconds(spec, torch.bfloat16) == pytest.approx(flops / 4e12 + 1e-5, rel=1e-3)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert _conv_seconds(spec) == pytest.approx(flops / 1e12 + 1e-5, rel=1e-3)


def test_fp32_matmul_stays_off_tf32_by_default() -> None:
    spec = DeviceSpec(name="tc", peak_flops={"float32": 1e12, "tf32": 8e12}, memory_bandwidth=1e15,
                      memory=2**30, link_bandwidth=1e10, efficiency={"matmul": {"float32": 0.5}})
    a = torch.empty(1024, 1024, device="meta")
    before = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False  # torch's default
        assert _price_on(spec, a).seconds == pytest.approx(2 * 1024**3 / 0.5e12, rel=1e-3)
        torch.backends.cuda.matmul.allow_tf32 = True
        assert _price_on(spec, a).seconds == pytest.approx(2 * 1024**3 / 8e12, rel=1e-3)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def _price_on(spec: DeviceSpec, a: torch.Tensor) -> CostMode:
    mode = CostMode(spec)
    with mode:
        a @ a
    return mode


def test_normalizations_are_priced_on_their_share_of_the_bandwidth() -> None:
    spec = DeviceSpec(name="bw", peak_flops={"float32": 1e12}, memory_bandwidth=1e11, memory=2**30,
                      link_bandwidth=1e10, efficiency={"group_norm": {"float32": 0.25}})
    x = torch.empty(8, 32, 64, 64, device="meta")
    plain, grouped = CostMode(spec), CostMode(spec)
    with plain:
        x * 2
    with grouped:
        torch.nn.functional.group_norm(x, 4)
    assert grouped.bytes >= plain.bytes
    assert grouped.seconds == pytest.approx(grouped.bytes / 0.25e11)


def test_grouped_matmuls_count_the_routed_experts_flops() -> None:
    # [Note: grouped matmuls]: a mixture of experts' grouped matmul was priced by its bytes
    # alone, as if element-wise (a Mixtral's experts next to free)
    import transformers.integrations.moe  # noqa: F401  (registers transformers::grouped_mm_fallback)

    tokens, k, n, experts = 64, 32, 48, 4
    x = torch.empty(tokens, k, device="meta")
    w = torch.empty(experts, k, n, device="meta")
    offs = torch.tensor([16, 32, 48, 64], device="meta", dtype=torch.int32)
    m = _price(torch.ops.transformers.grouped_mm_fallback, x, w, offs)
    assert m.flops == 2 * tokens * k * n
    assert m.seconds >= 2 * tokens * k * n / 1e12
    bf16 = torch.bfloat16  # torch's own grouped matmul takes bfloat16 only
    m = _price(torch.ops.aten._grouped_mm, x.to(bf16), w.to(bf16), offs)
    assert m.flops == 2 * tokens * k * n
    grad = torch.empty(tokens, n, device="meta")
    m = _price(torch.ops.transformers.grouped_mm_fallback_backward, x, w, offs, grad)
    assert m.flops == 2 * 2 * tokens * k * n
    # a weight gradient's grouped matmul: both operands 2-D, the groups split the contraction
    m = _price(torch.ops.aten._grouped_mm, torch.empty(k, tokens, device="meta", dtype=bf16),
               torch.empty(tokens, n, device="meta", dtype=bf16), offs)
    assert m.flops == 2 * k * tokens * n
