"""The ``torch.vmap`` regions of an exported graph, each folded into one node that no cut can split.

[Note: vmap regions]
torch.export inlines ``torch.vmap`` (transformers' masking_utils builds some attention
masks with it: T5Gemma 2's encoder) as ``_vmap_increment_nesting``, ``_add_batch_dim``,
the function's ops on batched tensors, ``_remove_batch_dim`` and
``_vmap_decrement_nesting``. The nesting is interpreter state that no data edge carries,
so the planner saw cuts inside the region that send only tensors. Cut there, stage 0 ran
its forward inside a vmap level it never left (the tensors it sent then refused
``requires_grad_``: "inside of a function being transformed by a functorch transform"),
stage 1 left a level it never entered, and a stage that made the mask again ([Note:
values made again]) ran ``_add_batch_dim`` without its level. ``fold_vmap_regions``
moves each outermost region, from its first increment to the decrement that matches it,
into a submodule called by one node, whose outputs the region's readers take with
``getitem``: the planner, the profiler and the split see one op that makes the mask.
The node is owned by the module whose forward made the mask (``model.encoder.text_model``),
not by ``vmap_K``: that submodule is the trace's, so an export naming it (T5Gemma 2's
layer record listed ``vmap_0`` as a module of its first unit until 2026-12-08) named a module
that the user's model lacks, and DeepSpeed's ``get_submodule`` would fail on it.
"""

from __future__ import annotations

import operator

import torch.fx as fx

_ENTER, _EXIT = "_vmap_increment_nesting", "_vmap_decrement_nesting"
FOLDED = "autopipe_vmap_region"
"""Meta key of a node that calls a folded region: its module is its ``nn_module_stack``'s."""


def fold_vmap_regions(gm: fx.GraphModule) -> None:
    """Fold every outermost vmap region of ``gm`` into a call of a submodule ``vmap_K``
    ([Note: vmap regions]); the caller recompiles ``gm``."""
    regions: list[list[fx.Node]] = []
    depth = 0
    for n in gm.graph.nodes:
        name = getattr(n.target, "__name__", None) if n.op == "call_function" else None
        if name == _ENTER:
            if depth == 0:
                regions.append([])
            depth += 1
        if depth:
            regions[-1].append(n)
        if name == _EXIT:
            depth -= 1
    assert depth == 0, "torch.export left a vmap level open"
    for k, region in enumerate(regions):
        _fold(gm, region, f"vmap_{k}")


def _fold(gm: fx.GraphModule, region: list[fx.Node], name: str) -> None:
    """Replace the nodes of ``region`` (consecutive in ``gm``) by one call of a new
    submodule ``name`` that runs them in their order."""
    first = region[0]
    for n in region:
        if n.op == "get_attr":  # a weight the region reads: it stays, read before the call
            first.prepend(n)
    body = [n for n in region if n.op != "get_attr"]
    inside = set(body)
    inputs = list(dict.fromkeys(a for n in body for a in n.all_input_nodes if a not in inside))
    outputs = [n for n in body if any(u not in inside for u in n.users)]

    sub = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for a in inputs:
        env[a] = sub.placeholder(a.name)
        env[a].meta = dict(a.meta)
    for n in body:
        env[n] = sub.node_copy(n, lambda a: env[a])
    sub.output(tuple(env[n] for n in outputs))
    gm.add_submodule(name, fx.GraphModule(gm, sub))

    with gm.graph.inserting_before(body[0]):
        call = gm.graph.call_module(name, tuple(inputs))
        call.meta = {k: v for k, v in body[-1].meta.items() if k != "val"}
        call.meta[FOLDED] = True
        call.meta["val"] = tuple(n.meta.get("val") for n in outputs)
        for i, n in enumerate(outputs):
            item = gm.graph.call_function(operator.getitem, (call, i))
            item.meta = dict(n.meta)
            n.replace_all_uses_with(item)
    for n in reversed(body):
        gm.graph.erase_node(n)
