"""Which inputs a node writes in place: the aten schema where there is one, else version counters."""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.fx as fx
import torch.utils._pytree as pytree

# Python targets of fx graphs that never write their inputs (no probe run needed)
_PURE_FUNCTIONS: frozenset[object] = frozenset({
    operator.getitem, operator.add, operator.sub, operator.mul, operator.truediv,
    operator.floordiv, operator.mod, operator.pow, operator.matmul, operator.neg, operator.pos,
    operator.invert, operator.and_, operator.or_, operator.xor, operator.eq, operator.ne,
    operator.lt, operator.le, operator.gt, operator.ge, getattr,
})


def written_inputs(
    node: fx.Node,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    op: Callable[[tuple[Any, ...], dict[str, Any]], Any],
    candidates: Iterable[torch.Tensor],
) -> set[int]:
    """``id()`` of the tensors among ``candidates`` that running ``node`` writes in place.

    [Note: in-place writes while profiling]
    A profiler runs each node many times (warm-up, timed repeats) on the same input
    values, where the model runs it once. A node that writes an input in place (T5's
    relative-position buckets do ``add_`` on an index tensor; ``masked_fill_``,
    ``copy_``, in-place activations) would write it again on every run, and the value
    passed on to later nodes would be wrong: an index then leaves its table, or, worse,
    stays in range and is silently wrong. So the walker needs to know which inputs a
    node writes: every extra run gets fresh copies of them, and the one run whose output
    is passed on writes the real values, once, as the model does.

    An aten operator (every node of a ``torch.export`` graph) says so in its schema
    (``Tensor(a!)``: ``alias_info.is_write``). For anything else (``call_module``,
    ``call_method``, Python functions in fx graphs) the node is run once on copies of
    ``candidates`` and a copy whose version counter moved was written (a write through a
    view moves its base's counter too). Methods whose names do not end in ``_`` are
    out-of-place by torch's convention and a few Python operators are known pure; those
    skip the probe run. A module that writes its own state (batch-norm statistics) is
    not seen here; ``buffers_restored`` in ``_copy.py`` undoes that.

    Args:
        node: the fx node.
        args: its positional argument values, as they will be passed to ``op``.
        kwargs: its keyword argument values.
        op: runs the node on ``(args, kwargs)`` (used for the probe run only).
        candidates: the tensors that may be written and would need copies (inputs, not
            parameters).
    """
    tensors = {id(t): t for t in candidates}
    if not tensors:
        return set()
    target = node.target
    if node.op == "call_function" and isinstance(target, torch._ops.OpOverload):
        return _by_schema(target, args, kwargs) & tensors.keys()
    if node.op == "call_method" and not str(target).endswith("_"):
        return set()
    if node.op == "call_function" and _is_pure(target):
        return set()
    return _by_probe(op, args, kwargs, tensors)


def _is_pure(target: object) -> bool:
    try:
        return target in _PURE_FUNCTIONS
    except TypeError:  # an unhashable callable
        return False


def _by_schema(target: torch._ops.OpOverload, args: tuple[Any, ...], kwargs: dict[str, Any]) -> set[int]:
    out: set[int] = set()
    for i, a in enumerate(target._schema.arguments):
        if a.alias_info is None or not a.alias_info.is_write:
            continue
        value = args[i] if i < len(args) and not a.kwarg_only else kwargs.get(a.name)
        out.update(id(t) for t in pytree.tree_leaves(value) if isinstance(t, torch.Tensor))
    return out


def _by_probe(op: Callable[[tuple[Any, ...], dict[str, Any]], Any], args: tuple[Any, ...],
              kwargs: dict[str, Any], tensors: dict[int, torch.Tensor]) -> set[int]:
    copies = {i: t.clone() for i, t in tensors.items()}
    versions = {i: c._version for i, c in copies.items()}
    a, k = pytree.tree_map_only(torch.Tensor, lambda t: copies.get(id(t), t), (args, kwargs))
    op(a, k)
    return {i for i, c in copies.items() if c._version != versions[i]}
