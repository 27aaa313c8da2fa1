"""Tests for autopipe/runtime/layouts.py: a received value laid out again as the whole graph
had it ([Note: received layouts])."""

from __future__ import annotations

import torch

from autopipe.runtime.layouts import relayout, traced_order


def test_a_dense_permuted_value_is_laid_out_again() -> None:
    traced = torch.randn(2, 1, 64, 16).transpose(1, 3)  # CLAP's mel bins on channels
    order = traced_order(traced)
    assert order is not None
    received = traced.contiguous()  # as sendable sends it
    again = relayout(received, order)
    assert again.stride() == traced.stride() and torch.equal(again, traced)
    nhwc = torch.randn(2, 5, 4, 8).permute(0, 3, 1, 2)
    again = relayout(nhwc.contiguous(), traced_order(nhwc) or ())
    assert again.stride() == nhwc.stride() and torch.equal(again, nhwc)


def test_contiguous_or_sparse_values_are_left_as_received() -> None:
    assert traced_order(torch.randn(3, 4)) is None
    assert traced_order(torch.randn(4, 6)[:, ::2]) is None  # a slice: not dense
    assert traced_order(torch.randn(4, 1).expand(4, 3)) is None
    assert traced_order(None) is None
