"""Running one fx node alone: detached inputs, its parameters, and gradients w.r.t. each."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch import nn

Op = Callable[[tuple[Any, ...], dict[str, Any]], Any]


@dataclass(slots=True)
class NodeCall:
    """One node, ready to run on its own autograd graph.

    [Note: per-node autograd]
    Each input that requires grad in the whole model is detached into a fresh leaf,
    so the node's forward builds a graph of its own; ``torch.autograd.grad`` on that
    graph w.r.t. the leaves is the input-gradient half of the node's backward, and
    w.r.t. the parameters it reads the weight-gradient half. Autograd formulas skip
    gradients nobody asked for (``output_mask``), so the halves are real work splits.
    """

    node: fx.Node
    forward: Callable[[], Any]
    """Runs the node on its prepared inputs (a new autograd graph each call)."""
    inputs: list[torch.Tensor]
    """Leaves standing for the node's inputs that require grad."""
    params: list[torch.Tensor]
    """Parameters the node reads that require grad."""

    def backward(self, out: Any, which: str) -> Callable[[], Any] | None:
        """A callable computing ``which`` (``all``, ``input``, ``weight``) gradients of ``out``.

        None when there is nothing to differentiate.
        """
        tensors = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor) and t.requires_grad]
        targets = {"all": self.inputs + self.params, "input": self.inputs, "weight": self.params}[which]
        if not tensors or not targets:
            return None
        grads = [torch.ones_like(t) for t in tensors]

        def run() -> Any:
            return torch.autograd.grad(tensors, targets, grads, retain_graph=True, allow_unused=True)

        return run


def prepare(
    node: fx.Node,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    op: Op,
    param_ids: set[int],
    module: nn.Module | None,
    clone_inputs: bool = False,
) -> NodeCall:
    """Make a NodeCall for ``node`` from its already-computed argument values.

    Args:
        node: the fx node.
        args: its positional argument values (outputs of earlier nodes, parameters).
        kwargs: its keyword argument values.
        op: runs the node's target on ``(args, kwargs)``.
        param_ids: ``id()`` of every parameter of the model.
        module: the submodule of a ``call_module`` node (its parameters count as the node's).
        clone_inputs: run on clones of the leaves (for ops that modify an input in place).
    """
    leaves: dict[int, torch.Tensor] = {}
    params: dict[int, torch.Tensor] = {}

    def detach(t: torch.Tensor) -> torch.Tensor:
        if id(t) in param_ids:
            if t.requires_grad:
                params[id(t)] = t
            return t
        if not t.requires_grad:
            return t
        if id(t) not in leaves:
            leaves[id(t)] = t.detach().requires_grad_()
        return leaves[id(t)]

    args, kwargs = pytree.tree_map_only(torch.Tensor, detach, (args, kwargs))
    if module is not None:
        for p in module.parameters():
            if p.requires_grad:
                params.setdefault(id(p), p)
    inputs = list(leaves.values())
    if clone_inputs:
        copies = {id(t) for t in inputs}

        def forward() -> Any:
            a, k = pytree.tree_map_only(torch.Tensor, lambda t: t.clone() if id(t) in copies else t,
                                        (args, kwargs))
            return op(a, k)
    else:
        def forward() -> Any:
            return op(args, kwargs)

    return NodeCall(node=node, forward=forward, inputs=inputs, params=list(params.values()))


def modifies_input(e: BaseException) -> bool:
    """Whether an exception is autograd refusing an in-place op on a leaf."""
    text = str(e)
    return isinstance(e, RuntimeError) and "in-place operation" in text and "leaf" in text

