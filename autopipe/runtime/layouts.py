"""A received value laid out again as the whole graph had it.

[Note: received layouts]

A value crosses a cut as contiguous memory (``sendable`` in ``autopipe.runtime.split``),
but in the whole graph it may have had another layout (a transpose, a permute), and the
receiving stage's ops would then see other strides than the traced graph's. Kernels may
round otherwise on other strides, and one computes wrongly: torch 2.13's CPU batch-norm
backward, on an input and an output gradient laid out differently ([Note: batch norm
gradients laid out like its output] in ``autopipe.runtime.norms``). So each received
tensor whose traced value was dense but not contiguous is laid out again in its traced
dimension order (one permuted contiguous copy in the receiving stage), and its gradient
flows back through that copy (made contiguous for sending by ``contiguous_grad``). CLAP's
audio encoder, cut after the transpose that puts its mel bins on channels, then computes
its batch norm as the whole graph does, bit for bit.
"""

from __future__ import annotations

from typing import Any

import torch


def traced_order(val: Any) -> tuple[int, ...] | None:
    """The dimension order, outermost first, of a traced tensor laid out densely but not
    contiguously (a transpose, a permute); None for anything else ([Note: received layouts])."""
    if not isinstance(val, torch.Tensor) or val.is_contiguous() or val.dim() < 2:
        return None
    stride, size = val.stride(), val.shape
    order = tuple(sorted(range(val.dim()), key=lambda d: (-stride[d], d)))
    expected = 1
    for d in reversed(order):
        if size[d] != 1 and stride[d] != expected:
            return None  # not dense (a slice, an expand): no layout to restore
        expected *= int(size[d])
    return order


def relayout(x: Any, order: tuple[int, ...]) -> Any:
    """A copy of ``x`` laid out in dimension order ``order`` (outermost first), strides of
    size-1 dims included, as the traced value was ([Note: received layouts])."""
    if not isinstance(x, torch.Tensor) or x.dim() != len(order):
        return x
    inverse = tuple(sorted(range(len(order)), key=order.__getitem__))
    return x.permute(order).clone(memory_format=torch.contiguous_format).permute(inverse)
