"""CPU tensors given a contiguous tensor's strides, where a torch kernel crashes on others.

torch 2.13's CPU group-norm backward crashes the process on a channels-last input when asked
for the weight's and bias's gradients alone ([Note: group norm in a weight pass] in
``autopipe.runtime.norms``). The runtime's zero-bubble stages and the profiler's timing of a
group norm's weight pass both hand such a norm its input through ``dense_on_cpu``; the
profiler and the runtime both live above this module.
"""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn.functional as F

GROUP_NORMS = (torch.ops.aten.group_norm.default, torch.ops.aten.native_group_norm.default, F.group_norm)
"""Group norms as fx call_function targets (export gives ``aten.group_norm``, fx ``F.group_norm``)."""


def is_group_norm(root: fx.GraphModule, n: fx.Node) -> bool:
    """Whether ``n`` is a group norm taking its input first (a function or an ``nn.GroupNorm``)."""
    norm = (n.op == "call_function" and n.target in GROUP_NORMS) or (
        n.op == "call_module" and isinstance(root.get_submodule(str(n.target)), torch.nn.GroupNorm))
    return norm and bool(n.args) and isinstance(n.args[0], fx.Node)


def dense_on_cpu(x: torch.Tensor) -> torch.Tensor:
    """``x`` with a contiguous tensor's strides, where it is a CPU tensor with others (a 1 × 1
    map with channels-last strides included, which ``is_contiguous()`` accepts)."""
    if isinstance(x, torch.Tensor) and x.device.type == "cpu" and x.stride() != _dense_strides(x.shape):
        return x.clone(memory_format=torch.contiguous_format)
    return x


def _dense_strides(shape: torch.Size) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))
