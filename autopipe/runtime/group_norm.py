"""Group norms in a split backward: their input made dense on the CPU first.

[Note: group norm in a weight pass]

torch 2.13's CPU group-norm backward crashes the process (a segmentation fault, no
Python error) when its input is channels-last and only the weight's and bias's gradients
are asked for: ``native_group_norm_backward`` with ``output_mask = [False, True, True]``.
That is exactly what a zero-bubble schedule's weight pass asks (W restarts from the node
where a group norm's weight meets the input's path: [Note: split backward] in
``autopipe.runtime.split_backward``). A feature map of 1 × 1 is channels-last as much as
it is contiguous, and torch picks channels-last for it (Mask2Former at 32 × 32 images).
Checked on 1 × 1, 2 × 2 and 4 × 4 maps: input gradients alone, or all three, do not crash.

In the stages of a schedule that splits its backward, each group norm's input passes
through ``dense_on_cpu``, which returns a CPU tensor whose strides are not those of a
contiguous one as a contiguous copy (and anything else as it is); the group norm's backward
then sees a contiguous input. Strides, not ``is_contiguous()``: a 1 × 1 map with
channels-last strides is "contiguous" too, and crashed the same. The norm's forward computes
the same normalisation, rounded perhaps otherwise than on the channels-last layout, and its
output is contiguous.
"""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn.functional as F

_GROUP_NORMS = (torch.ops.aten.group_norm.default, torch.ops.aten.native_group_norm.default, F.group_norm)


def dense_on_cpu(x: torch.Tensor) -> torch.Tensor:
    """``x`` with a contiguous tensor's strides, where it is a CPU tensor with others
    ([Note: group norm in a weight pass])."""
    if isinstance(x, torch.Tensor) and x.device.type == "cpu" and x.stride() != _dense_strides(x.shape):
        return x.clone(memory_format=torch.contiguous_format)
    return x


def _dense_strides(shape: torch.Size) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


def guard_group_norms(gm: fx.GraphModule) -> dict[fx.Node, fx.Node]:
    """Make each group norm of ``gm`` take its input through ``dense_on_cpu``, in place;
    returns each group norm's new ``dense_on_cpu`` node (a group recomputed with the norm
    must hold it too)."""
    added: dict[fx.Node, fx.Node] = {}
    for n in list(gm.graph.nodes):
        is_norm = (n.op == "call_function" and n.target in _GROUP_NORMS) or (
            n.op == "call_module" and isinstance(gm.get_submodule(str(n.target)), torch.nn.GroupNorm))
        if not is_norm or not n.args or not isinstance(n.args[0], fx.Node):
            continue
        with gm.graph.inserting_before(n):
            dense = gm.graph.call_function(dense_on_cpu, (n.args[0],))
        n.update_arg(0, dense)
        added[n] = dense
    if added:
        gm.graph.lint()
        gm.recompile()
    return added
