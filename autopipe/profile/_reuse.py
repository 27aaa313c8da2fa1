"""Which node calls cost the same: a key from the operator and what it runs on.

[Note: reusing the costs of repeated nodes]
A transformer repeats one layer: Llama-2-70B's 5,191 nodes are 80 copies of ~65
layer nodes plus a few more. On meta tensors a node's roofline price is a function of
the operator, its non-tensor arguments, and the shape, strides, dtype and role of each
tensor it reads (an input that needs a gradient, a parameter, a plain tensor; which of
them are one tensor or share a storage); the values do not exist. ``call_key`` builds
exactly that key, and ``estimate`` prices each node once per key: a later node with
the same key gets the same seconds, FLOPs, bytes and kernels. It still runs, outside
the pricing mode (its output feeds later nodes, and its saved bytes are counted on
every run: they depend on what earlier nodes saved, e.g. Llama's rotary tables are
saved by layer 0 only). That run executes the very kernels the priced one did, unless
the pricing mode ran a kernel as its decomposition (``CostMode.decomposed``); for such
keys the forward is priced on every run and the entry is reused only where it priced
the same. Nodes whose key cannot be made safely (``call_module`` leaves, whose
hyper-parameters are not in their shapes; nodes that write their inputs; arguments of
unknown types) are priced every time. What is kept per key is everything the launch
queue ([Note: the launch queue] in ``_queue.py``) takes from a node: the aten calls of
its forward and of its whole backward, views included, each with its host and device
seconds, and the input gradients' fraction of the backward. Those depend on the key
and on what one estimate holds fixed: the device spec, its host seconds per call in
each phase, and the TF32 flags (read once per estimate), so the queue replays a
reused node exactly as a freshly priced one. tests/test_profile_reuse.py checks that
reused costs equal per-node ones, float for float, with and without TF32, in bf16;
Llama-2-70B's profile is byte-identical either way.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import torch
import torch.fx as fx
import torch.utils._pytree as pytree

from autopipe.profile._node import NodeCall
from autopipe.profile._saved import storage_key

_PLAIN = (bool, int, str, type(None), torch.dtype, torch.device, torch.layout, torch.memory_format)


def call_key(node: fx.Node, call: NodeCall) -> Hashable | None:
    """A key equal for two node calls that cost the same on meta tensors, or None.

    Args:
        node: the fx node.
        call: its prepared call (the arguments as the node runs them).
    """
    if node.op not in ("call_function", "call_method") or call.written:
        return None
    leaves, spec = pytree.tree_flatten(call.arguments)
    inputs = {id(t) for t in call.inputs}
    params = {id(t) for t in call.params}
    first_of: dict[int, int] = {}
    storage_of: dict[int, int] = {}
    parts: list[Hashable] = []
    for i, x in enumerate(leaves):
        if isinstance(x, torch.Tensor):
            if x.device.type != "meta":
                return None
            role = "input" if id(x) in inputs else "param" if id(x) in params else "plain"
            same = first_of.setdefault(id(x), i)
            shared = storage_of.setdefault(storage_key(x), i)
            parts.append((tuple(x.shape), x.stride(), x.storage_offset(), x.dtype, x.requires_grad,
                          role, same, shared))
        elif isinstance(x, float):
            parts.append(("float", repr(x)))
        elif isinstance(x, _PLAIN):
            parts.append((type(x).__name__, x))
        else:
            return None
    return (node.op, _target(node.target), spec, tuple(parts))


def _target(target: Any) -> Hashable:
    try:
        hash(target)
    except TypeError:
        return id(target)
    return target  # type: ignore[no-any-return]
