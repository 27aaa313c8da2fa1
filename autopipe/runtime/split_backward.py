"""The zero-bubble schedules' split backward: input gradients now (I), weight gradients later (W).

# [Note: split backward]
zb-h1, ZBV and DualPipeV run a stage's backward in two actions: I computes the
gradients of the stage's inputs (what the previous stage waits for), W those of its
weights, later, in what would be a bubble. torch.distributed.pipelining's
``stage_backward_input``/``stage_backward_weight`` do it by grouping parameters at the
autograd nodes where their paths meet the part of the graph that the inputs reach
("intersections"): I saves the gradients arriving at those nodes, W restarts from them
towards the parameters alone. Two flaws in torch 2.13's version lost or doubled real
gradients here (all found on Hugging Face models split by the ILP, checked against
one process):

- **A parameter in two groups.** Groups are merged when a parameter's intersections
  include one already taken, but the other intersections keep pointing at the
  parameter's first group, so the parameter sits in both and its gradient is computed
  twice (a tied embedding and head, Whisper: exactly 2×), or the second group's pass
  walks nodes the first one freed ("Trying to backward through the graph a second
  time", T5 cut after its embedding). Here groups are merged with a union-find, so
  each parameter is in exactly one, and every pass keeps the graph (it is freed with
  the stage's outputs when W ends).
- **Paths the inputs never reach.** A value a stage computes from its weights alone
  and sends on (T5's relative position bias, a decoder's position embeddings, a
  decoder's key/value from its own tokens) meets no intersection, so torch puts its
  weights in no group and they never get that gradient (T5's decoder position bias
  did not train at all under ZBV). Here I also records those outputs' gradient edges,
  and W takes the weights' gradients from them too: their paths are disjoint from the
  groups' (a path that touched a node the inputs reach would end at an output they
  reach), so nothing is counted twice.

torch's last stage detaches the model's outputs in place once I is done
(``backward_one_chunk``), so that the outputs it keeps for the step's caller hold no graph.
An op that saved one of them as its input could then not run in W ("Trying to use a saved
tensor that has been detached in-place"): the loss's (MSE saves its input; PatchTST cut
before its first weight, W runs the whole loss), or the stage's own (CLIP's similarity
matmul saves the text embeddings, an output too, for the image tower's weights). So under
a split backward the loss reads views of the outputs (``loss_views``), which nothing
detaches, and an output that the stage's ops read too leaves the stage as a copy
(``sendable`` in ``autopipe.runtime.split``). (An op that saved its own result is not
affected: autograd keeps a saved output apart from the tensor object.)

The first stage is untouched: its inputs need no gradient, so torch runs its whole
backward in W.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.autograd.graph import GradientEdge, Node


@dataclass
class _Group:
    """Parameters whose weight gradients come from the same intersection nodes."""

    params: list[torch.nn.Parameter]
    nodes: list[Node]
    grads: list[tuple[torch.Tensor | None, ...] | None]
    """What I saw arriving at each node (None: the node did not run)."""


@dataclass
class WeightWork:
    """What I leaves for W: the groups and the outputs no stage input reaches."""

    groups: list[_Group]
    unreached: list[tuple[GradientEdge, torch.Tensor]]
    params: list[torch.nn.Parameter]


def _node_of(t: torch.Tensor) -> Node | None:
    """``t``'s autograd node: its grad_fn, or for a leaf that requires grad its AccumulateGrad."""
    if t.grad_fn is not None:
        return t.grad_fn
    if t.requires_grad:
        fn = t.view_as(t).grad_fn
        return fn.next_functions[0][0] if fn is not None else None
    return None


def _consumers(roots: Iterable[Node]) -> dict[Node, list[Node]]:
    """Node → the nodes whose backward feeds it (forward consumers), over the graph below ``roots``."""
    consumers: dict[Node, list[Node]] = {}
    stack = list(roots)
    seen = set(stack)
    while stack:
        node = stack.pop()
        for child, _ in node.next_functions:
            if child is None:
                continue
            consumers.setdefault(child, []).append(node)
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return consumers


def _downstream(starts: Iterable[Node], consumers: dict[Node, list[Node]]) -> set[Node]:
    """Every node a forward path from ``starts`` reaches."""
    seen: set[Node] = set()
    stack = list(starts)
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(consumers.get(node, ()))
    return seen


def _intersections(start: Node, reached: set[Node], consumers: dict[Node, list[Node]]) -> dict[Node, None]:
    """The first nodes in ``reached`` on each forward path from ``start``, in the order found
    (the graph's own order, so every run and rank groups alike)."""
    found: dict[Node, None] = {}
    seen = {start}
    stack = [start]
    while stack:
        for nxt in consumers.get(stack.pop(), ()):
            if nxt in seen:
                continue
            seen.add(nxt)
            if nxt in reached:
                found[nxt] = None
            else:
                stack.append(nxt)
    return found


def _groups(params: Sequence[torch.nn.Parameter], reached: set[Node],
            consumers: dict[Node, list[Node]]) -> list[_Group]:
    """Parameters grouped so that groups share no intersection node (union-find)."""
    owner: dict[Node, int] = {}
    parent = list(range(len(params)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    meets: list[dict[Node, None]] = []
    for i, p in enumerate(params):
        node = _node_of(p)
        meets.append(_intersections(node, reached, consumers) if node is not None else {})
        for n in meets[i]:
            if n in owner:
                parent[find(i)] = find(owner[n])
            else:
                owner[n] = i
    params_of: dict[int, list[torch.nn.Parameter]] = {}
    nodes_of: dict[int, dict[Node, None]] = {}
    for i, p in enumerate(params):
        if meets[i]:
            params_of.setdefault(find(i), []).append(p)
            nodes_of.setdefault(find(i), {}).update(meets[i])
    return [_Group(params=params_of[r], nodes=list(nodes_of[r]), grads=[None] * len(nodes_of[r]))
            for r in params_of]


def loss_views(outputs: Sequence[Any]) -> tuple[Any, ...]:
    """The last stage's outputs as its loss reads them under a split backward: each tensor a
    view of itself, which torch's in-place detach of the outputs leaves intact
    ([Note: split backward])."""
    return tuple(o.view_as(o) if isinstance(o, torch.Tensor) else o for o in outputs)


def backward_input(outputs: Sequence[torch.Tensor], output_grads: Sequence[torch.Tensor | None] | None,
                   inputs: Sequence[Any], params: Iterable[torch.nn.Parameter],
                   ) -> tuple[tuple[torch.Tensor | None, ...], WeightWork]:
    """I: the gradients of the stage's ``inputs`` (also added to their ``.grad``), and what W needs.

    ``output_grads`` None: ``outputs`` is the loss (gradient one). The outputs are
    detached in place afterwards, as torch does, so their graph lives only as long as
    W's work.
    """
    pairs = []
    for i, out in enumerate(outputs):
        if out.grad_fn is None and not out.requires_grad:
            continue
        grad = torch.ones_like(out) if output_grads is None else output_grads[i]
        pairs.append((out, grad))
    wanted = [p for p in params if p.requires_grad]
    roots = [n for n in (_node_of(o) for o, _ in pairs) if n is not None]
    consumers = _consumers(roots)
    starts = [n for n in (_node_of(x) for x in inputs if isinstance(x, torch.Tensor) and x.requires_grad)
              if n is not None]
    reached = _downstream(starts, consumers)
    groups = _groups(wanted, reached, consumers)
    unreached = [(GradientEdge(o.grad_fn, o.output_nr), g) for o, g in pairs
                 if o.grad_fn is not None and g is not None and o.grad_fn not in reached]

    handles = []
    for group in groups:
        for k, node in enumerate(group.nodes):
            def save(grad_outputs: tuple[torch.Tensor | None, ...], group: _Group = group, k: int = k) -> None:
                group.grads[k] = grad_outputs
            handles.append(node.register_prehook(save))
    try:
        needed = [(i, x) for i, x in enumerate(inputs) if isinstance(x, torch.Tensor) and x.requires_grad]
        dinputs: list[torch.Tensor | None] = [None] * len(inputs)
        live = [(o, g) for o, g in pairs if o.grad_fn is not None and o.grad_fn in reached]
        if needed and live:
            got = torch.autograd.grad([o for o, _ in live], [x for _, x in needed], [g for _, g in live],
                                      retain_graph=True, allow_unused=True)
            for (i, x), g in zip(needed, got):
                dinputs[i] = g
                if g is not None:
                    x.grad = g if x.grad is None else x.grad + g
    finally:
        for h in handles:
            h.remove()
    for out in outputs:
        if not out._is_view():  # views cannot be detached in place (sent outputs are copies)
            out.detach_()
    return tuple(dinputs), WeightWork(groups=groups, unreached=unreached, params=wanted)


def backward_weight(work: WeightWork) -> None:
    """W: the weight gradients I left, added to each parameter's ``.grad``."""
    for group in work.groups:
        edges, grads = [], []
        for node, saved in zip(group.nodes, group.grads):
            for i, g in enumerate(saved or ()):
                if g is not None:
                    edges.append(GradientEdge(node, i))
                    grads.append(g)
        if not edges:
            continue
        # a node downstream of another of the group's sends it gradient again in this
        # pass: it already has its whole gradient from I, so it gets exactly that
        handles = ([node.register_prehook(lambda _g, saved=saved: saved)
                    for node, saved in zip(group.nodes, group.grads) if saved is not None]
                   if len(group.nodes) > 1 else [])
        try:
            got = torch.autograd.grad(edges, group.params, grads, retain_graph=True, allow_unused=True)
        finally:
            for h in handles:
                h.remove()
        _accumulate(group.params, got)
    if work.unreached:
        edges_u = [e for e, _ in work.unreached]
        grads_u = [g for _, g in work.unreached]
        _accumulate(work.params, torch.autograd.grad(edges_u, work.params, grads_u, retain_graph=True,
                                                     allow_unused=True))
    work.groups.clear()
    work.unreached.clear()


def _accumulate(params: Sequence[torch.nn.Parameter], grads: Sequence[torch.Tensor | None]) -> None:
    for p, g in zip(params, grads):
        if g is not None:
            p.grad = g if p.grad is None else p.grad + g
