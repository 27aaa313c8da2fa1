"""Which fx nodes write their arguments in place, which return views of them, and the order
that this imposes beyond the data edges."""

from __future__ import annotations

import operator
from collections.abc import Sequence, Set

import torch
import torch.fx as fx

_VIEW_METHODS = frozenset({
    "view", "view_as", "reshape", "reshape_as", "transpose", "permute", "t", "unsqueeze",
    "squeeze", "expand", "expand_as", "narrow", "select", "flatten", "unflatten", "as_strided",
    "chunk", "split", "unbind", "contiguous", "detach", "__getitem__", "movedim", "swapaxes",
    "diagonal", "unfold", "split_with_sizes", "tensor_split", "real", "imag",
})
"""Methods whose result may share its storage with the tensor they are called on."""


def aliased_args(root: fx.GraphModule, n: fx.Node) -> tuple[list[fx.Node], list[fx.Node]]:
    """(the arguments ``n`` writes in place, the arguments its output may be a view of)."""
    target = n.target
    if n.op == "call_function" and isinstance(target, torch._ops.OpOverload):
        schema = target._schema
        written: list[fx.Node] = []
        viewed: list[fx.Node] = []
        returns: set[str] = set()
        for r in schema.returns:
            if r.alias_info is not None:
                returns |= set(r.alias_info.before_set)
        for i, a in enumerate(schema.arguments):
            if a.alias_info is None:
                continue
            value = n.args[i] if i < len(n.args) and not a.kwarg_only else n.kwargs.get(a.name)
            values = value if isinstance(value, (list, tuple)) else [value]
            nodes = [v for v in values if isinstance(v, fx.Node)]
            if a.alias_info.is_write:
                written += nodes
            if set(a.alias_info.before_set) & returns:
                viewed += nodes
        return written, viewed
    first = [n.args[0]] if n.args and isinstance(n.args[0], fx.Node) else []
    name = str(target) if n.op == "call_method" else getattr(target, "__name__", "")
    in_place = (name.endswith("_") and not name.endswith("__")) or n.kwargs.get("inplace") is True \
        or target is operator.setitem
    if n.op == "call_module":
        in_place = getattr(root.get_submodule(str(target)), "inplace", False) is True
    viewed = first if in_place or name in _VIEW_METHODS or target is operator.getitem else []
    return (first if in_place else []), viewed


_AS_IS_OPS = frozenset({
    torch.ops.aten.dropout.default, torch.ops.aten.feature_dropout.default,
    torch.ops.aten.alpha_dropout.default, torch.ops.aten.feature_alpha_dropout.default,
    torch.ops.aten.type_as.default,
})
"""ATen ops whose schema says their output is new but which return their input itself
where they do nothing: a dropout with ``p = 0`` or outside training, ``type_as`` to its
own type ([Note: ops that return their input as is])."""
_AS_IS_NAMES = frozenset({
    "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
    "feature_dropout", "type_as",
})
"""The same as functions or methods (``F.dropout``, ``torch.dropout``), as torch.fx keeps them."""

# [Note: ops that return their input as is]
#
# ATen's dropouts return their input tensor itself, not a copy, when p is 0 or they run
# outside training (``_dropout_impl``), and ``type_as`` does when the type is the same;
# their schemas still declare a new tensor, so
# ``aliased_args`` does not count them as views. A write in place after one writes the
# dropout's input: Hubert's and Wav2Vec2's encoders zero the padded frames of their feature
# projection's output (``hidden_states[~mask] = 0``) after a dropout of ``feat_proj_dropout
# = 0.0``. Where that input was a linear routed through ``fused_linear``, autograd refused
# the write ("Output 0 of _LinearGrad is a view and is being modified inplace"), which
# stopped ``autopipe plan`` (timing the stages together) and ``autopipe train`` on
# HubertForCTC fed an attention mask. ``written_in_place`` follows these ops as views; the
# order edges and storages elsewhere keep the schemas' word, as a dropout with p > 0 makes
# a new tensor.


def _as_is(root: fx.GraphModule, n: fx.Node) -> list[fx.Node]:
    """The argument ``n`` may return itself ([Note: ops that return their input as is])."""
    first = [n.args[0]] if n.args and isinstance(n.args[0], fx.Node) else []
    if n.op == "call_module":
        module = root.get_submodule(str(n.target))
        return first if isinstance(module, torch.nn.modules.dropout._DropoutNd) else []
    if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload):
        return first if n.target in _AS_IS_OPS else []
    if n.op in ("call_function", "call_method"):
        name = str(n.target) if n.op == "call_method" else getattr(n.target, "__name__", "")
        return first if name in _AS_IS_NAMES else []
    return []


def written_in_place(root: fx.GraphModule, body: Sequence[fx.Node], names: Sequence[str]) -> set[str]:
    """Which of the values ``names`` the nodes ``body`` write in place, directly or through
    views or ops that may return their input as is ([Note: ops that return their input as is])."""
    alias: dict[str, str] = {name: name for name in names}
    out: set[str] = set()
    for n in body:
        written, viewed = aliased_args(root, n)
        viewed = [*viewed, *_as_is(root, n)]
        out.update(alias[a.name] for a in written if a.name in alias)
        for a in viewed:
            if a.name in alias:
                alias[n.name] = alias[a.name]
    return out


def _source(n: fx.Node, viewed: Sequence[fx.Node], tensors: Set[str], views: Set[str]) -> fx.Node | None:
    """The node whose storage ``n``'s value shares, given the arguments it may view, or None.
    An item of a value that is not one tensor (topk's values, say) is a storage of its own,
    unless that value is itself made of views (``views``: the nodes known to be views)."""
    if not viewed:
        return None
    source = viewed[0]
    if n.target is operator.getitem and source.name not in tensors and source.name not in views:
        return None
    return source


def view_sources(gm: fx.GraphModule, tensors: Set[str]) -> dict[str, fx.Node]:
    """Node name → the node whose storage it views, for every node that only makes a view
    (writes nothing in place); ``tensors`` as in ``in_place_order``."""
    out: dict[str, fx.Node] = {}
    for n in gm.graph.nodes:
        if n.op not in ("call_function", "call_method"):
            continue
        written, viewed = aliased_args(gm, n)
        source = None if written else _source(n, viewed, tensors, out.keys())
        if source is not None:
            out[n.name] = source
    return out


def written_storages(gm: fx.GraphModule, body: Sequence[fx.Node],
                     views: dict[str, fx.Node]) -> set[str]:
    """The storages (named by the node that made them) that ``body`` writes in place."""
    out: set[str] = set()
    for n in body:
        for a in aliased_args(gm, n)[0]:
            out.add(storage_of(a.name, views))
    return out


def storage_of(name: str, views: dict[str, fx.Node]) -> str:
    """The node that made the storage ``name`` views (``name`` itself if no view)."""
    while name in views:
        name = views[name].name
    return name


# [Note: in-place writes order the graph]
#
# A node that writes a tensor in place changes what every later reader of that tensor,
# or of any view of its storage, sees; and no earlier reader may see the write. The data
# edges do not say so. DeepSeek-V3's attention, exported, makes its keys with new_empty,
# writes both halves with copy_ into slices of it, and hands the new_empty node itself to
# the attention: nothing joins the copy_ nodes to the attention, so a cut of the graph
# could run the attention in stage 0 and one copy_ in stage 1, over memory never written
# (NaN losses). ``in_place_order`` gives these orders as extra edges: the last write of
# a storage before each later reader, and every reader since that write before the next
# write. The planner keeps them like data edges that carry nothing
# (``autopipe.partition.problem.Value.order_only``), and the runtime refuses a plan that
# breaks one.


def in_place_order(gm: fx.GraphModule, tensors: Set[str]) -> list[tuple[str, str]]:
    """Pairs ``(a, b)`` of nodes where ``a`` must run no later than ``b`` because of an
    in-place write and are not already joined by a data edge ([Note: in-place writes order
    the graph]); in node order, ``a`` before ``b``. ``tensors``: the nodes whose value is
    one tensor. A node that writes in place shares the storage it writes, as its value is
    that tensor.
    """
    root: dict[str, str] = {}  # node → the node whose storage its value views
    last_write: dict[str, str] = {}
    readers: dict[str, list[str]] = {}  # storage → its readers since its last write
    edges: dict[tuple[str, str], None] = {}
    for n in gm.graph.nodes:
        if n.op in ("placeholder", "get_attr"):
            continue
        inputs = {a.name for a in n.all_input_nodes}
        read = {root.get(a, a) for a in inputs}
        written, viewed = aliased_args(gm, n)
        for r in sorted(read):
            w = last_write.get(r)
            if w is not None and w != n.name and w not in inputs:
                edges[(w, n.name)] = None
        for r in sorted({root.get(a.name, a.name) for a in written}):
            for reader in readers.get(r, []):
                if reader != n.name and reader not in inputs:
                    edges[(reader, n.name)] = None
            last_write[r] = n.name
            readers[r] = []
        for r in read:
            readers.setdefault(r, []).append(n.name)
        source = _source(n, viewed, tensors, root.keys())
        if source is not None:
            root[n.name] = root.get(source.name, source.name)
    return list(edges)
