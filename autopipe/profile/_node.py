"""Running one fx node alone: detached inputs, its parameters, and gradients w.r.t. each."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch import nn

from autopipe.profile._mutation import written_inputs

Op = Callable[[tuple[Any, ...], dict[str, Any]], Any]


class NodeCall:
    """One node, ready to run on its own autograd graph.

    [Note: per-node autograd]
    Each input that requires grad in the whole model is detached into a fresh leaf,
    so the node's forward builds a graph of its own; ``torch.autograd.grad`` on that
    graph w.r.t. the leaves is the input-gradient half of the node's backward, and
    w.r.t. the parameters it reads the weight-gradient half. Autograd formulas skip
    gradients nobody asked for (``output_mask``), so the halves are real work splits.

    A profiler runs a node many times; per [Note: in-place writes while profiling] in
    ``_mutation.py`` the inputs the node writes are copied afresh for every extra run
    (``fresh`` then ``forward``) and written for real only by ``run``, once::

        fresh(); forward()   x warm-up + repeats   on copies of the written inputs
        run()                x 1                   output passed on to later nodes
        backward(out, ...)   x any                 on run()'s graph
        finish()                                   writes to leaves reach the real inputs

    Attributes:
        node: the fx node.
        inputs: leaves standing for the node's inputs that require grad.
        params: parameters the node reads that require grad.
        written: ``id()`` of the argument values (leaves or plain tensors) the node writes.
    """

    def __init__(self, node: fx.Node, op: Op, args: tuple[Any, ...], kwargs: dict[str, Any], *,
                 inputs: list[torch.Tensor], params: list[torch.Tensor], written: set[int],
                 sources: dict[int, torch.Tensor]) -> None:
        self.node = node
        self.inputs = inputs
        self.params = params
        self.written = written
        self._op = op
        self._tree = (args, kwargs)
        self._sources = sources
        self._current: tuple[tuple[Any, ...], dict[str, Any]] | None = None if written else self._tree
        self._landing: list[tuple[torch.Tensor, torch.Tensor]] = []

    @property
    def arguments(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """``(args, kwargs)`` as the node runs them: leaves for inputs that need a gradient."""
        return self._tree

    def _copied(self, *, leaves_only: bool) -> tuple[tuple[Any, ...], dict[str, Any], dict[int, torch.Tensor]]:
        """The arguments with written tensors replaced by copies (one per tensor), and the copies."""
        leaves = {id(t) for t in self.inputs}
        copies: dict[int, torch.Tensor] = {}

        def copy(t: torch.Tensor) -> torch.Tensor:
            if id(t) not in self.written or (leaves_only and id(t) not in leaves):
                return t
            if id(t) not in copies:
                copies[id(t)] = t.clone()  # a leaf's clone is not a leaf: autograd allows the write
            return copies[id(t)]

        a, k = pytree.tree_map_only(torch.Tensor, copy, self._tree)
        return a, k, copies

    def fresh(self) -> None:
        """New copies of the inputs the node writes, for the next ``forward`` (untimed)."""
        if self.written:
            a, k, _ = self._copied(leaves_only=False)
            self._current = (a, k)

    def forward(self) -> Any:
        """Runs the node on the copies made by the last ``fresh`` (a new autograd graph each call)."""
        if self._current is None:
            self.fresh()
            assert self._current is not None
        return self._op(*self._current)

    def run(self) -> Any:
        """Runs the node once for real: what it writes lands in its inputs, as in the model.

        A written leaf is run on a clone (autograd refuses writes to a leaf); ``finish``
        copies the clone's new value into the input the leaf stands for.
        """
        if not self.written:
            return self._op(*self._tree)
        a, k, copies = self._copied(leaves_only=True)
        self._landing = [(self._sources[i], c) for i, c in copies.items()]
        return self._op(a, k)

    def finish(self) -> None:
        """After the node's backward: written leaves' values reach the inputs they stand for."""
        with torch.no_grad():
            for source, value in self._landing:
                if source.shape == value.shape:
                    source.copy_(value)
                else:  # a write of shape (``unsqueeze_``, ``squeeze_``, ``t_``): the input
                    # takes the new shape, as it does in the model (torch's stubs lack set_(Tensor))
                    source.set_(value.detach())  # type: ignore[call-overload]
        self._landing = []

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
) -> NodeCall:
    """Make a NodeCall for ``node`` from its already-computed argument values.

    Args:
        node: the fx node.
        args: its positional argument values (outputs of earlier nodes, parameters).
        kwargs: its keyword argument values.
        op: runs the node's target on ``(args, kwargs)``.
        param_ids: ``id()`` of every parameter of the model.
        module: the submodule of a ``call_module`` node (its parameters count as the node's).
    """
    leaves: dict[int, torch.Tensor] = {}
    sources: dict[int, torch.Tensor] = {}
    params: dict[int, torch.Tensor] = {}
    plain: dict[int, torch.Tensor] = {}

    def detach(t: torch.Tensor) -> torch.Tensor:
        if id(t) in param_ids:
            if t.requires_grad:
                params[id(t)] = t
            return t
        if not t.requires_grad:
            plain[id(t)] = t
            return t
        if id(t) not in leaves:
            leaf = t.detach().requires_grad_()
            leaves[id(t)] = leaf
            sources[id(leaf)] = t
        return leaves[id(t)]

    args, kwargs = pytree.tree_map_only(torch.Tensor, detach, (args, kwargs))
    if module is not None:
        for p in module.parameters():
            if p.requires_grad:
                params.setdefault(id(p), p)
    inputs = list(leaves.values())
    written = written_inputs(node, args, kwargs, op=op, candidates=[*inputs, *plain.values()])
    return NodeCall(node, op, args, kwargs, inputs=inputs, params=list(params.values()),
                    written=written, sources=sources)
