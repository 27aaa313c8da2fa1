"""A dispatch mode that prices every aten call on a DeviceSpec: FLOPs, bytes, roofline and host time."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from autopipe.profile._queue import Call, queue_seconds
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
_CONVOLUTION = {aten.convolution, aten.convolution_backward, aten._convolution,
                aten.cudnn_convolution, aten.cudnn_convolution_transpose}
_MATMUL = {aten.mm, aten.addmm, aten.bmm, aten.baddbmm, aten._scaled_mm}
# grouped matmuls (a mixture of experts' experts), which torch's flop_registry lacks, by
# qualified name: transformers registers its op only once imported
_GROUPED_MM = {"aten::_grouped_mm", "transformers::grouped_mm_fallback",
               "transformers::grouped_mm_fallback_backward"}
# image normalizations: statistics per channel or group, reduced over the batch and the image
_BATCH_NORM = {aten.native_batch_norm, aten._native_batch_norm_legit, aten._native_batch_norm_legit_functional,
               aten.native_batch_norm_backward, aten.cudnn_batch_norm, aten.cudnn_batch_norm_backward}
_GROUP_NORM = {aten.native_group_norm, aten.native_group_norm_backward}
_ATTENTION = {aten._scaled_dot_product_efficient_attention, aten._scaled_dot_product_efficient_attention_backward,
              aten._scaled_dot_product_flash_attention, aten._scaled_dot_product_flash_attention_backward,
              aten._scaled_dot_product_cudnn_attention, aten._scaled_dot_product_cudnn_attention_backward,
              aten._efficient_attention_forward, aten._efficient_attention_backward,
              aten._flash_attention_forward, aten._flash_attention_backward}


class CostMode(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Accumulates FLOPs, bytes moved, kernels and the calls of what runs inside it.

    [Note: the roofline]
    Each kernel's device time is ``max(flops / rate, bytes / memory_bandwidth)`` plus
    the spec's fixed ``kernel_overhead_s``. FLOPs come from PyTorch's own formulas
    (``torch.utils.flop_counter.flop_registry``: matmuls, convolutions, attention);
    kernels it does not list are priced by their bytes alone, which is what bounds
    element-wise work. Bytes are every tensor read plus every tensor written, with no
    fusion assumed; an embedding or index reads only the rows it gathers. The dtype
    of a kernel is that of its first floating input. The rate is the spec's peak for
    that dtype times its ``efficiency`` for the kernel's class (a normalization's
    efficiency scales the bandwidth instead: it is bound by bytes); a float32 convolution
    runs on the TF32 units when ``torch.backends.cudnn.allow_tf32`` (cuDNN's default:
    True), a float32 matmul when ``torch.backends.cuda.matmul.allow_tf32`` (default:
    False), read when the mode is made.

    Every call, views and allocations included, also costs the host ``host_s``
    (the phase's dispatch time), and ``seconds`` is the calls' time through the
    launch queue from idle ([Note: the launch queue] in ``_queue.py``): with
    ``host_s = 0`` that is the plain sum of the kernels' device times.

    Args:
        spec: the device spec to price on.
        host_s: host seconds per aten call (``spec.dispatch_forward_s`` or ``_backward_s``).
        tf32: per kernel class, whether float32 runs on the TF32 units; None reads
            ``tf32_flags()`` now.
    """

    def __init__(self, spec: DeviceSpec, host_s: float = 0.0, tf32: Mapping[str, bool] | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.spec = spec
        self.host_s = host_s
        self.tf32 = dict(tf32_flags() if tf32 is None else tf32)
        self.flops = 0
        self.bytes = 0
        self.kernels = 0
        self.calls: list[Call] = []
        """(host seconds, device seconds or None) per aten call, in order."""
        self.decomposed = 0
        """Kernels run as their decomposition: only then does what runs differ from a run
        without this mode (see [Note: reusing the costs of repeated nodes])."""

    @property
    def seconds(self) -> float:
        """The calls' time through an idle launch queue."""
        return queue_seconds(self.calls)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        packet = func._overloadpacket
        grouped = packet._qualified_op_name in _GROUPED_MM
        if packet not in flop_registry and not grouped and not func.is_view and func not in _FREE:
            # like FlopCounterMode: a composite op is priced by the calls it becomes
            with self:
                r = func.decompose(*args, **kwargs)
            if r is not NotImplemented:
                self.decomposed += 1
                return r
        out = func(*args, **kwargs)
        if func.is_view or func in _FREE or not _touches_tensors(func, out):
            self.calls.append((self.host_s, None))
            return out
        if grouped:
            flops = _grouped_mm_flops(packet._qualified_op_name, args, out)
        else:
            flops = int(flop_registry[packet](*args, **kwargs, out_val=out)) if packet in flop_registry else 0
        moved = _bytes(func, args, kwargs, out)
        kind, dtype = "matmul" if grouped else _kind(packet), _dtype(args, out)
        t = moved / self.spec.bandwidth_for(kind, dtype)
        if flops:
            t = max(t, flops / self.spec.kernel_rate(kind, dtype, tf32=self.tf32.get(kind, False)))
        self.flops += flops
        self.bytes += moved
        self.kernels += 1
        self.calls.append((self.host_s, t + self.spec.kernel_overhead_s + self.spec.overhead_for(kind)))
        return out


def tf32_flags() -> dict[str, bool]:
    """Per kernel class, whether torch's backends let float32 run on the TF32 units now."""
    return {"convolution": bool(torch.backends.cudnn.allow_tf32),
            "matmul": bool(torch.backends.cuda.matmul.allow_tf32)}


def _grouped_mm_flops(name: str, args: Any, out: Any) -> int:
    """FLOPs of a grouped matmul: each row of the input meets the one expert it was routed to.

    [Note: grouped matmuls]
    A mixture of experts sorts its tokens by expert and multiplies each group by its own
    expert's matrix in one call: ``aten._grouped_mm(a, b, offs)`` or transformers' opaque
    ``grouped_mm_fallback(input (S, K), weight (E, K, N), offs)`` (a loop of ``mm``, a
    custom op so that torch.export keeps it whole), 2·S·K·N FLOPs, the work of the routed
    (active) experts only, whatever E. Neither is in torch's flop_registry and neither
    decomposes, so before this both were priced by their bytes, as if element-wise: a
    Mixtral's experts cost next to nothing. transformers' backward op returns the input's
    and the weight's gradients together, 2·2·S·K·N. For ``_grouped_mm`` with both operands
    2-D (a weight gradient: the groups split the contraction) each output element sums
    over its group's share of ``a``'s columns, so the groups' sum is 2·M·N·K_total.
    """
    a, b = _tensors(args)[:2]
    if name == "transformers::grouped_mm_fallback_backward":  # -> (grad_input, grad_weight)
        return 2 * 2 * a.shape[0] * a.shape[1] * b.shape[2]
    if a.dim() == 2 and b.dim() == 2:
        return 2 * a.shape[0] * b.shape[1] * a.shape[1]
    return 2 * _tensors(out)[0].numel() * a.shape[-1]


def _kind(packet: Any) -> str:
    if packet in _CONVOLUTION:
        return "convolution"
    if packet in _BATCH_NORM:
        return "batch_norm"
    if packet in _GROUP_NORM:
        return "group_norm"
    if packet in _ATTENTION:
        return "attention"
    return "matmul" if packet in _MATMUL else "other"


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
