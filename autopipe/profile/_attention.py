"""Pricing attention as the fused kernel a GPU would run, not the math fallback meta tensors get."""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F

aten = torch.ops.aten
_SDPA_TARGETS = (aten.scaled_dot_product_attention.default, F.scaled_dot_product_attention)
_SIGNATURE = inspect.Signature([
    inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=d)
    for n, d in (("query", inspect.Parameter.empty), ("key", inspect.Parameter.empty),
                 ("value", inspect.Parameter.empty), ("attn_mask", None), ("dropout_p", 0.0),
                 ("is_causal", False))
] + [inspect.Parameter("scale", inspect.Parameter.KEYWORD_ONLY, default=None),
     inspect.Parameter("enable_gqa", inspect.Parameter.KEYWORD_ONLY, default=False)])


def is_sdpa(n: fx.Node) -> bool:
    """Whether node ``n`` is ``scaled_dot_product_attention``."""
    return n.op == "call_function" and n.target in _SDPA_TARGETS


def fused_sdpa(*args: Any, **kwargs: Any) -> torch.Tensor:
    """``scaled_dot_product_attention`` through the memory-efficient fused kernel.

    [Note: attention on meta tensors]
    On meta tensors SDPA takes the math path, which saves the full L×S attention
    matrix for backward; on a GPU the fused kernels save only the output and a
    log-sum-exp row. Calling ``_scaled_dot_product_efficient_attention`` directly
    (it has meta kernels and FLOP formulas, accepts masks and fp32) prices attention
    as a GPU runs it. A boolean mask becomes the additive bias the kernel takes.
    """
    b = _SIGNATURE.bind(*args, **kwargs)
    b.apply_defaults()
    q, k, v = b.arguments["query"], b.arguments["key"], b.arguments["value"]
    mask = b.arguments["attn_mask"]
    if q.dim() != 4:
        return aten.scaled_dot_product_attention.default(*args, **kwargs)  # type: ignore[no-any-return]
    if k.shape[-3] != q.shape[-3]:  # grouped-query attention: repeat the key/value heads
        rep = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(rep, dim=-3), v.repeat_interleave(rep, dim=-3)
    if mask is not None:
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, float("-inf"))
        mask = mask.to(q.dtype).expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    out = aten._scaled_dot_product_efficient_attention(
        q, k, v, mask, True, b.arguments["dropout_p"], b.arguments["is_causal"],
        scale=b.arguments["scale"])
    return out[0]  # type: ignore[no-any-return]
