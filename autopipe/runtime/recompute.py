"""Recomputation in a stage: the plan's node groups run under non-reentrant activation checkpointing.

[Note: recomputed regions]

A plan's stage lists groups of its nodes to recompute ([Note: recomputation] in
``autopipe.partition.costs``), one per planned block. Each group becomes one call of
``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)`` inside the stage's
GraphModule: autograd keeps only the group's inputs, and the group's forward runs again
when the backward first needs one of its saved tensors::

    before   a ─► [mul ─► gelu ─► mul] ─► add ─► out        (the group in brackets)
    after    a ─► recompute_0(a, w) ─► getitem ─► add ─► out
                  └ checkpoint(body, a, w): body = mul ─► gelu ─► mul

The body is a GraphModule of its own with no attributes: parameters, buffers and
submodules the group uses enter as arguments (``call_module`` nodes become calls of
the module passed in), so the stage's parameters keep their names and the body is
registered as a submodule without holding a second copy of anything. A module that
updates its own state in forward (batch norm's running statistics) would update it
twice; its buffers are restored after the recomputation, and so are the buffers the
group reads as values: a graph from ``torch.export`` passes batch norm's statistics to
``aten.batch_norm`` as arguments, which it updates although its schema does not say so
(Hugging Face's ResNet and MobileViT trained with ``--recompute full`` moved their
running means twice a step before). A group that writes a value it
did not make in place (an input, a buffer) cannot run twice and is refused.

A group's input that a later node of the stage writes in place (RWKV's and RecurrentGemma's
states, written slice by slice) would be read again after the write: autograd stops the
backward ("modified by an inplace operation": checkpointing saved the input at an older
version). The group gets a copy of such an input, made when it is called, which nothing
writes: its recomputation reads what its first forward read, at the price of that input's
size held until the backward (found by storage, so a write to other elements of a storage
the group reads, as BEiT's and DeepSeek-V3's, costs a copy too). A view of that storage
that the group hands to a node outside it (RWKV's next slot of the state) is made outside
the group, so a write through it still lands in the stage's tensor, not in the copy.

Checkpointing recomputes a group once per backward call (graph task). A split backward's
weight pass (zb-h1, zbv, dualpipev) makes one call per parameter group, so each stage's
W action runs under one ``GraphExecGroup`` (``recompute_once_per_weight_pass``): the group
then recomputes once in W, as the planner counts ([Note: recomputation in a split
backward] in ``autopipe.partition.costs``).
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Sequence, Set
from typing import Any

import torch
import torch.fx as fx
from torch.utils.checkpoint import checkpoint

from autopipe.errors import PlanError
from autopipe.trace.aliasing import storage_of, view_sources, written_in_place, written_storages


def _call_module(module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
    """A ``call_module`` node of a recomputed group, with its module as an argument."""
    return module(*args, **kwargs)


class Recompute(torch.nn.Module):
    """Runs a group of a stage's nodes under non-reentrant checkpointing ([Note: recomputed regions])."""

    def __init__(self, body: fx.GraphModule, buffer_args: Sequence[int] = (),
                 copied_args: Sequence[int] = ()) -> None:
        super().__init__()
        self.body = body
        self.buffer_args = tuple(buffer_args)
        """Positions of the arguments that are the stage's buffers (restored like modules' buffers)."""
        self.copied_args = tuple(copied_args)
        """Positions of the arguments the stage writes in place after the group: the group
        gets copies ([Note: recomputed regions])."""

    def forward(self, *args: Any) -> Any:
        if self.copied_args:
            args = tuple(a.clone() if i in self.copied_args else a for i, a in enumerate(args))
        modules = [a for a in args if isinstance(a, torch.nn.Module)]
        buffers = [args[i] for i in self.buffer_args]

        def contexts() -> tuple[contextlib.AbstractContextManager[None], _BuffersRestored]:
            return contextlib.nullcontext(), _BuffersRestored(modules, buffers)

        return checkpoint(self.body, *args, use_reentrant=False, context_fn=contexts)


class _BuffersRestored:
    """Around a recomputation: the modules' buffers, and ``buffers``, are as before it once it
    is done (a backward that runs in two passes, as the zero-bubble schedules' do,
    recomputes twice)."""

    def __init__(self, modules: Sequence[torch.nn.Module], buffers: Sequence[torch.Tensor] = ()) -> None:
        self.modules = modules
        self.buffers = buffers
        self.saved: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __enter__(self) -> None:
        tensors = [*(b for m in self.modules for b in m.buffers()), *self.buffers]
        self.saved = [(b, b.detach().clone()) for b in tensors]

    def __exit__(self, *exc: object) -> None:
        # through .data: as if the recomputation never ran, version counter included (the
        # first forward's batch norm saved the statistics it was given, and autograd
        # refuses a saved tensor written since)
        with torch.no_grad():
            for buf, copy in self.saved:
                buf.data.copy_(copy)
        self.saved = []


def recompute_once_per_weight_pass(stage: Any) -> None:
    """Run ``stage``'s weight-gradient actions (a torch ``PipelineStage``'s
    ``backward_weight_one_chunk``) under one ``GraphExecGroup`` each, in place: a recomputed
    group runs its forward once per W action, not once per parameter group. A torch without
    ``GraphExecGroup`` keeps its own behaviour (the same gradients, more recomputation)."""
    group = getattr(torch.utils.checkpoint, "GraphExecGroup", None)
    if group is None:
        return
    weight_pass = stage.backward_weight_one_chunk

    def once(*args: Any, **kwargs: Any) -> Any:
        with group():
            return weight_pass(*args, **kwargs)

    stage.backward_weight_one_chunk = once


def checkpoint_groups(gm: fx.GraphModule, groups: Sequence[Sequence[fx.Node]], *, stage: int,
                      tensors: Set[str] | None = None) -> None:
    """Rewrite ``gm`` so that each group of its nodes runs under checkpointing, in place.

    Each group must be convex in ``gm``'s graph (no path leaves it and comes back), as
    the planner's blocks are. ``tensors``: the names of ``gm``'s nodes whose value is one
    tensor (as in ``autopipe.trace.aliasing.view_sources``); None takes every node for one,
    which may copy an input that needs no copy, never miss one.

    Raises:
        PlanError: a group writes a value made outside it in place.
    """
    graph = gm.graph
    buffers = {name for name, _ in gm.named_buffers()}
    for k, group in enumerate(groups):
        members = [n for n in group if n.op in ("call_function", "call_method", "call_module")]
        if not members:
            continue
        order = {n: i for i, n in enumerate(graph.nodes)}
        members.sort(key=order.__getitem__)
        members, written_later = _written_later(gm, members, tensors)
        if not members:
            continue
        inside = set(members)
        inputs: list[fx.Node] = []
        for n in members:
            for a in n.all_input_nodes:
                if a not in inside and a not in inputs:
                    inputs.append(a)
        written = written_in_place(gm, members, [a.name for a in inputs])
        if written:
            raise PlanError(f"stage {stage} recomputes a group of nodes from {members[0].name!r} on "
                            f"that writes {sorted(written)[0]!r}, made outside it, in place: the "
                            f"group cannot run twice", hint="plan again with --recompute none")
        outputs = [n for n in members if any(u not in inside for u in n.users)]
        if not outputs:
            continue
        copied = [i for i, a in enumerate(inputs) if a.op != "get_attr" and a.name in written_later]
        anchor = members[-1].next
        # nodes between the group's ends that read its results move after it (convexity:
        # none of them is also read by the group)
        moved: list[fx.Node] = []
        tainted = set(members)
        n = members[0]
        while n is not anchor:
            if n not in inside and any(a in tainted for a in n.all_input_nodes):
                moved.append(n)
                tainted.add(n)
            n = n.next
        body, module_targets = _body(members, inputs, outputs, f"Stage{stage}Recompute{k}")
        name = f"recompute_{k}"
        buffer_args = [i for i, a in enumerate(inputs) if a.op == "get_attr" and str(a.target) in buffers]
        gm.add_submodule(name, Recompute(body, buffer_args, copied))
        with graph.inserting_before(anchor):
            mods = [graph.get_attr(t) for t in module_targets]
            call = graph.call_module(name, tuple(inputs) + tuple(mods))
            results = [graph.call_function(operator.getitem, (call, i)) for i in range(len(outputs))]
        for n in moved:
            anchor.prepend(n)
        for out, res in zip(outputs, results):
            for user in list(out.users):
                if user not in inside:
                    user.replace_input_with(out, res)
        for n in reversed(members):
            graph.erase_node(n)
    graph.lint()
    gm.recompile()


def _written_later(gm: fx.GraphModule, members: Sequence[fx.Node],
                   tensors: Set[str] | None) -> tuple[list[fx.Node], set[str]]:
    """The group (``members``, in graph order) without the views it makes of a storage that
    a node after its first one writes in place, where a node outside the group reads them
    (the write must land in that storage, not in the group's copy of it); and the names of
    the nodes whose storage such a node writes ([Note: recomputed regions])."""
    if tensors is None:
        tensors = {n.name for n in gm.graph.nodes}
    views = view_sources(gm, tensors)
    inside = set(members)
    later: list[fx.Node] = []
    n = members[0].next
    while n.op != "root":
        if n not in inside:
            later.append(n)
        n = n.next
    storages = written_storages(gm, later, views)
    if not storages:
        return list(members), set()
    made = {m.name for m in members}
    out: set[fx.Node] = set()
    for m in members:
        root = storage_of(m.name, views)
        if m.name in views and root in storages and root not in made and any(u not in inside for u in m.users):
            x = m
            while x in inside and x.name in views:
                out.add(x)
                x = views[x.name]
    written = {n.name for n in gm.graph.nodes if storage_of(n.name, views) in storages}
    return [m for m in members if m not in out], written


def _body(members: Sequence[fx.Node], inputs: Sequence[fx.Node],
          outputs: Sequence[fx.Node], class_name: str) -> tuple[fx.GraphModule, list[str]]:
    """The group as a GraphModule without attributes, and the targets of the modules it
    calls (passed to it after ``inputs``)."""
    g = fx.Graph()
    env: dict[fx.Node, Any] = {a: g.placeholder(a.name) for a in inputs}
    targets = list(dict.fromkeys(str(n.target) for n in members if n.op == "call_module"))
    modules = {t: g.placeholder(f"module_{i}") for i, t in enumerate(targets)}
    for n in members:
        if n.op == "call_module":
            args = fx.map_arg(n.args, env.__getitem__)
            kwargs = fx.map_arg(n.kwargs, env.__getitem__)
            env[n] = g.call_function(_call_module, (modules[str(n.target)], *args), kwargs)
        else:
            env[n] = g.node_copy(n, env.__getitem__)
    g.output(tuple(env[o] for o in outputs))
    body = fx.GraphModule(torch.nn.Module(), g, class_name=class_name)
    return body, targets
