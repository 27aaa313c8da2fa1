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
