"""Which aten calls of a training step take memory they hand back before they return: CUDA scratch.

The plans' memory used to count only what a stage keeps (parameters, gradients,
optimizer state, saved activations, the loss's workspace). On the H200 the convolution
nets peaked 1.19 of that in training and 1.20-1.28 over it in one forward and backward (docs/gpu.md):
something is held only while a call runs. A cuDNN convolution takes a workspace from
PyTorch's caching allocator for the call and frees it before returning; so might other
kernels. This probe runs one forward, loss and backward under a dispatch mode that reads
the allocator's counters around every aten call (host-side counters: no synchronisation)
and reports, per op, the largest scratch a call of it took ([Note: a call's scratch] in
``autopipe.profile._scratch``; ``measure`` records it per graph node, this probe per aten
op). On the CPU (no allocator counters) it reports nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from autopipe.profile._scratch import Counters, counters_for, with_scratch


class OpScratch(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """``largest[op]``: the most scratch one call of ``op`` took (bytes); ``calls[op]`` how
    many calls of it took any."""

    def __init__(self, counters: Counters) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.counters = counters
        self.largest: dict[str, int] = {}
        self.calls: dict[str, int] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out, scratch = with_scratch(self.counters, lambda: func(*args, **(kwargs or {})))
        if scratch > 0:
            name = str(func.overloadpacket.__name__)
            self.largest[name] = max(self.largest.get(name, 0), scratch)
            self.calls[name] = self.calls.get(name, 0) + 1
        return out


def op_scratch(model: torch.nn.Module, inputs: tuple[Any, ...], kwargs: dict[str, Any] | None,
               loss_fn: Callable[[Any, Any], torch.Tensor], target: Any,
               counters: Counters | None = None, top: int = 4) -> list[dict[str, Any]]:
    """One forward, loss and backward of ``model`` (its ``.grad`` fields untouched) under
    ``OpScratch``: the ``top`` ops by their largest scratch, as ``{"op", "bytes", "calls"}``.
    ``counters`` default to the CUDA device of the model's parameters; on a CPU model, []."""
    params = [p for p in model.parameters() if p.requires_grad]
    if counters is None:
        counters = counters_for(params[0].device if params else torch.device("cpu"))
        if counters is None:
            return []
    mode = OpScratch(counters)
    with mode:
        loss = loss_fn(model(*inputs, **(kwargs or {})), target)
        torch.autograd.grad(loss, params, allow_unused=True)
    ranked = sorted(mode.largest.items(), key=lambda kv: -kv[1])[:top]
    return [{"op": op, "bytes": n, "calls": mode.calls[op]} for op, n in ranked]
