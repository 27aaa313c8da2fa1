"""Writes at boolean-mask positions (``x[mask] = values``) priced on meta tensors.

[Note: masked writes on meta tensors]
``x[mask] = values`` traces to ``aten.index_put_`` with a boolean index, which torch runs by
turning the mask into positions (``nonzero``): a size that depends on the values, which meta
tensors do not have, so torch refuses it on meta and ``estimate`` failed on the node (Kosmos-2
writes its image features into the text embeddings at the image tokens' positions so). The
write's output has ``x``'s shape whatever the mask holds, and ``masked_scatter`` (or
``masked_fill`` for one value) writes the same elements, in the same order, without
positions: the estimate runs that instead, with the mask broadcast over ``x``'s trailing
dims. Anything else (a real device, integer indices, several indices, accumulate) runs
index_put as traced.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx

from autopipe.profile._node import Op

aten = torch.ops.aten
_INDEX_PUT = {aten.index_put_.default: True, aten.index_put.default: False}


def is_index_put(n: fx.Node) -> bool:
    """Whether node ``n`` is ``index_put`` or ``index_put_``."""
    return n.op == "call_function" and n.target in _INDEX_PUT


def index_put_on_meta(n: fx.Node) -> Op:
    """The op to run for index_put node ``n`` ([Note: masked writes on meta tensors])."""
    inplace = _INDEX_PUT[n.target]  # type: ignore[index]
    traced = n.target

    def run(x: torch.Tensor, indices: list[Any], values: torch.Tensor, accumulate: bool = False) -> Any:
        mask = indices[0] if len(indices) == 1 else None
        if (x.device.type != "meta" or accumulate or not isinstance(mask, torch.Tensor)
                or mask.dtype not in (torch.bool, torch.uint8) or mask.dim() > x.dim()):
            return traced(x, indices, values, accumulate)  # type: ignore[operator]
        mask = mask.bool().reshape(*mask.shape, *([1] * (x.dim() - mask.dim()))).expand(x.shape)
        if values.numel() == 1:
            one = values.reshape(()).to(x.dtype)
            return x.masked_fill_(mask, one) if inplace else x.masked_fill(mask, one)
        values = values.to(x.dtype)
        return x.masked_scatter_(mask, values) if inplace else x.masked_scatter(mask, values)

    return lambda a, k: run(*a, **k)
