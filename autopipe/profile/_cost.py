"""A dispatch mode that prices every aten kernel on a DeviceSpec: FLOPs, bytes, roofline time."""

from __future__ import annotations

from typing import Any

import torch
import torch.utils._pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from autopipe.profile.devices import DeviceSpec

aten = torch.ops.aten

# ops that allocate or check but move no data
_FREE = {
    aten.empty.memory_format, aten.empty_like.default, aten.empty_strided.default,
    aten.new_empty.default, aten.new_empty_strided.default, aten._assert_tensor_metadata.default,
    aten.sym_size.int, aten.sym_stride.int, aten.sym_numel.default, aten.sym_storage_offset.default,
    aten.is_same_size.default, aten.lift_fresh.default, aten.lift_fresh_copy.default,
}
# ops that read only the rows their indices pick, not the whole source tensor
_GATHER = {
    aten.embedding.default, aten.index.Tensor, aten.index_select.default, aten.gather.default,
}


class CostMode(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Accumulates FLOPs, bytes moved, kernels and roofline seconds of what runs inside it.

    [Note: the roofline]
    Each kernel takes ``max(flops / peak_flops[dtype], bytes / memory_bandwidth)`` plus
    the spec's fixed ``kernel_overhead_s``. FLOPs come from PyTorch's own formulas
    (``torch.utils.flop_counter.flop_registry``: matmuls, convolutions, attention);
    kernels it does not list are priced by their bytes alone, which is what bounds
    element-wise work. Bytes are every tensor read plus every tensor written, with no
    fusion assumed; views and allocations are free; an embedding or index reads only
    the rows it gathers. The dtype of a kernel is that of its first floating input.
    """

    def __init__(self, spec: DeviceSpec) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.spec = spec
        self.flops = 0
        self.bytes = 0
        self.kernels = 0
        self.seconds = 0.0
        self.decomposed = 0
        """Kernels run as their decomposition: only then does what runs differ from a run
        without this mode (see [Note: reusing the costs of repeated nodes])."""

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        packet = func._overloadpacket
        if packet not in flop_registry and not func.is_view and func not in _FREE:
            # like FlopCounterMode: a composite op is priced by the kernels it becomes
            with self:
                r = func.decompose(*args, **kwargs)
            if r is not NotImplemented:
                self.decomposed += 1
                return r
        out = func(*args, **kwargs)
        if func.is_view or func in _FREE or not _touches_tensors(func, out):
            return out
        flops = int(flop_registry[packet](*args, **kwargs, out_val=out)) if packet in flop_registry else 0
        moved = _bytes(func, args, kwargs, out)
        t = moved / self.spec.memory_bandwidth
        if flops:
            t = max(t, flops / self.spec.flops_for(_dtype(args, out)))
        self.flops += flops
        self.bytes += moved
        self.kernels += 1
        self.seconds += t + self.spec.kernel_overhead_s
        return out


def _nbytes(t: torch.Tensor) -> int:
    return int(t.numel() * t.element_size())


def _tensors(value: Any) -> list[torch.Tensor]:
    return [t for t in pytree.tree_leaves(value) if isinstance(t, torch.Tensor)]


def _touches_tensors(func: Any, out: Any) -> bool:
    return bool(_tensors(out)) or bool(func._schema.is_mutable)


def _bytes(func: Any, args: Any, kwargs: Any, out: Any) -> int:
    written = sum(_nbytes(t) for t in _tensors(out))
    inputs = _tensors((args, kwargs))
    if func in _GATHER and inputs:
        source = inputs[0]  # embedding's weight, index's self: read only where indexed
        read = sum(_nbytes(t) for t in inputs if t is not source) + written
    else:
        read = sum(_nbytes(t) for t in inputs)
    return read + written


def _dtype(args: Any, out: Any) -> str:
    for t in _tensors(args) + _tensors(out):
        if t.is_floating_point():
            return str(t.dtype).removeprefix("torch.")
    return "float32"
