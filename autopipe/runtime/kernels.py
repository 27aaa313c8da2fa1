"""Ops of a graph traced on meta that the CPU has no kernel for, run as the CPU's branch runs them.

[Note: the meta branch's histc]
Tracing a model built on the meta device runs its Python on meta tensors, and code that
chooses by the device type keeps the branch it chose for meta ([Note: a graph traced on
meta holds the meta branch] in ``autopipe.runtime.train``). transformers' ``grouped_mm``
experts (the default of Mixtral, Qwen2-MoE and their kin since transformers 5) count the
tokens each expert takes with ``torch.histc``, on the expert ids cast to int32 off the CPU
and to float32 on it: the CPU has no integer ``histc`` (``"histogram_cpu" not implemented
for 'Int'``), and a meta-built MoE stopped in its first step on CPU ranks until
2026-12-07. The two branches differ in that dtype alone: a histogram of integers below
2**24 is the same histogram of their float32 values, bin for bin (one formula places a
value in its bin for both), and the counts are exact in either dtype. So each ``histc`` of a
stage runs through ``histc``, which on the CPU counts an integer tensor's float32 values and
hands the counts back in the input's dtype, as the graph traced them; anything else goes to
``torch.histc`` as it is.
"""

from __future__ import annotations

import torch
import torch.fx as fx

_HISTC = (torch.ops.aten.histc.default, torch.histc)
"""``histc`` as torch.export writes it, and as ``symbolic_trace`` does."""


def histc(x: torch.Tensor, bins: int = 100, min: float = 0, max: float = 0) -> torch.Tensor:
    """``torch.histc``, which on the CPU also takes an integer tensor ([Note: the meta
    branch's histc])."""
    if x.device.type == "cpu" and not x.is_floating_point() and not x.is_complex():
        return torch.histc(x.float(), bins, min, max).to(x.dtype)
    return torch.histc(x, bins, min, max)


def mend_kernels(gm: fx.GraphModule) -> None:
    """Route ``gm``'s ``histc`` nodes through ``histc``, in place."""
    found = [n for n in gm.graph.nodes if n.op == "call_function" and n.target in _HISTC]
    for n in found:
        n.target = histc
    if found:
        gm.recompile()
