"""Norm kernels whose CPU backward goes wrong in a stage, and the guards a stage puts around them.

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
through ``dense_on_cpu`` (``autopipe._dense``; the profiler times a group norm so too, as its
weight pass crashed the same in ``measure``), which returns a CPU tensor whose strides are not those of a
contiguous one as a contiguous copy (and anything else as it is); the group norm's backward
then sees a contiguous input. Strides, not ``is_contiguous()``: a 1 × 1 map with
channels-last strides is "contiguous" too, and crashed the same. The norm's forward computes
the same normalisation, rounded perhaps otherwise than on the channels-last layout, and its
output is contiguous.

[Note: batch norm gradients laid out like its output]

torch 2.13's CPU batch-norm backward returns wrong weight, bias and input gradients when its
input and its output's gradient are laid out differently and a dimension of size 1 carries
an odd stride: a contiguous (2, 16, 64, 1) input with the gradient of a ``transpose(1, 3)``
of a contiguous (2, 1, 64, 16), or the other way round (checked against float64 on four
shapes: only the shapes with a size-1 dimension, and only these mixed pairs, go wrong; group
and instance norm never did). Within one graph the two layouts agree, but a cut changes one
of them: a stage receives its inputs, and receives its outputs' gradients, contiguous
(``sendable``, [Note: contiguous gradients]). CLAP's audio encoder transposes its
(batch, 1, frames, mel) features to put the mel bins on channels, batch-normalises them and
transposes back; cut after the first transpose, or after the batch norm, its weight and bias
gradients were off by 0.4 and 1.3 (found by a sweep of Hugging Face models, 2026-12-03).

So in every stage each batch norm's output passes through ``grad_like_output``, which returns
the tensor itself and, on the CPU, where the output has a dimension of size 1, registers a
hook that lays the gradient arriving at it out in the output's own strides (which follow the
input's) where the two differ in a dimension of more than one element, so the kernel sees
them alike. The forward is untouched, and a gradient laid out alike is not copied (nor one
whose strides differ only on dimensions of size 1: on those the kernel was right, and the
whole graph's own pairs are such). Outputs without a dimension of size 1 are left alone:
there the kernel is right on mixed layouts too, and the whole graph runs them mixed
(LeViT's stem: a contiguous (2, 16, 8, 8) batch norm whose gradient comes back
channels-last from ``flatten(2).transpose(1, 2)``). Laid out alike, its gradients rounded
otherwise than the whole graph's: 2e-8 apart after one step of the zoo's 2-rank job, 4e-3
(3%) in its stem's weights after two (CI, 2026-12-03; its classifier's batch norm normalises
2 values a channel, which magnifies any rounding). A received
input keeps the whole graph's layout too ([Note: received layouts] in
``autopipe.runtime.layouts``), so a cut before the batch norm leaves it as it was. A hook
registered before a later in-place write to the output still receives the gradient of the
value the batch norm made, which is the one its backward needs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.fx as fx
import torch.nn.functional as F

from autopipe._dense import dense_on_cpu, is_group_norm

_BATCH_NORMS = (torch.ops.aten.batch_norm.default, F.batch_norm)
"""Batch norms that return one tensor (export gives ``aten.batch_norm``; fx ``F.batch_norm``
or a module)."""


def grad_like_output(y: torch.Tensor) -> torch.Tensor:
    """``y`` itself; on the CPU, where ``y`` has a dimension of size 1, its gradient is laid
    out in ``y``'s strides before it reaches the node that made ``y`` ([Note: batch norm
    gradients laid out like its output])."""
    if isinstance(y, torch.Tensor) and y.requires_grad and y.device.type == "cpu" and 1 in y.shape:
        y.register_hook(_laid_out(y.shape, y.stride()))  # type: ignore[no-untyped-call]
    return y


def _laid_out(shape: torch.Size, strides: tuple[int, ...]) -> Callable[[torch.Tensor], torch.Tensor]:
    # shape and strides only: the hook must not keep the output alive
    def hook(grad: torch.Tensor) -> torch.Tensor:
        if _order(grad.shape, grad.stride()) == _order(shape, strides):
            return grad
        return torch.empty_strided(shape, strides, dtype=grad.dtype, device=grad.device).copy_(grad)

    return hook


def _order(shape: torch.Size, strides: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """The strides of a tensor's dimensions of more than one element: what decides how a
    kernel walks its memory."""
    return tuple((d, st) for d, (n, st) in enumerate(zip(shape, strides)) if n != 1)


def _is(gm: fx.GraphModule, n: fx.Node, functions: tuple[object, ...], module: type) -> bool:
    return (n.op == "call_function" and n.target in functions) or (
        n.op == "call_module" and isinstance(gm.get_submodule(str(n.target)), module))


def guard_norms(gm: fx.GraphModule, *, split_backward: bool) -> dict[fx.Node, fx.Node]:
    """Put the guards of [Note: batch norm gradients laid out like its output] (every stage)
    and [Note: group norm in a weight pass] (``split_backward``) around ``gm``'s norms, in
    place. Returns each guarded norm's new node (a group recomputed with the norm must hold
    it too)."""
    graph = gm.graph
    added: dict[fx.Node, fx.Node] = {}
    for n in list(graph.nodes):
        if _is(gm, n, _BATCH_NORMS, torch.nn.modules.batchnorm._BatchNorm):
            users = list(n.users)
            with graph.inserting_after(n):
                added[n] = graph.call_function(grad_like_output, (n,))
            for user in users:
                user.replace_input_with(n, added[n])
        elif split_backward and is_group_norm(gm, n):
            with graph.inserting_before(n):
                added[n] = graph.call_function(dense_on_cpu, (n.args[0],))
            n.update_arg(0, added[n])
    if added:
        graph.lint()
        gm.recompile()
    return added
