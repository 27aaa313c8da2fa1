"""A module converted to the dtype and device it already has, inside ``forward``, under ``torch.export``.

[Note: a module's own dtype inside forward]
Switch Transformers' and NLLB-MoE's routers run ``self.classifier =
self.classifier.to(self.dtype)`` in every forward (the router computes in float32
whatever the model's dtype). Eagerly that returns the module as it is when it is float32
already. Under ``torch.export`` its parameters are tensor subclasses, so ``Module._apply``
swaps every converted tensor into the module (``torch.utils.swap_tensors``), which export's
parameters refuse: "_apply(): Couldn't swap Linear.weight", and the model cannot be traced.

While tracing, ``Module._apply`` therefore first asks the conversion what it makes of each
parameter and buffer; where it makes each one into itself (``.to`` of the dtype and device
a tensor has returns that tensor), nothing is swapped and the module is returned as it is,
as eager PyTorch leaves it. The graph reads the same parameters (export records the
conversions as ``aten.to`` of a tensor to its own dtype, which returns it). A conversion
that changes anything runs as torch runs it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn


@contextlib.contextmanager
def own_dtype_conversions_kept() -> Iterator[None]:
    """Within this block, ``Module._apply`` of a conversion that changes no tensor returns the module."""
    original = nn.Module._apply

    def _apply(self: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> Any:
        modules = self.modules() if recurse else (self,)
        tensors = [t for m in modules for t in (*m._parameters.values(), *m._buffers.values()) if t is not None]
        if all(fn(t) is t for t in tensors):
            return self
        return original(self, fn, recurse)  # type: ignore[no-untyped-call]

    nn.Module._apply = _apply  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module._apply = original  # type: ignore[method-assign]
