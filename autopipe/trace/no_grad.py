"""Which values surely have no gradient: what a cut may send forward only."""

from __future__ import annotations

from collections.abc import Sequence

from autopipe.trace.graph import NodeInfo

# [Note: values without a gradient]
#
# A value that crosses a cut and has no gradient (an attention mask, position ids, rotary
# tables, a count of tokens per expert) needs nothing sent back in the backward. The runtime
# learns which values have one from the stages' fake run (``autopipe.runtime.meta``); the
# planner, which never runs the stages, reads it from the graph: a node's value surely has
# none when it is not a floating-point (or complex) tensor, or when it reads no parameter,
# directly or through the nodes it reads (the model's inputs never have one: the pipeline
# feeds them as data). That is a subset of the truth (a value ``detach``-ed after reading a
# parameter, or made under ``no_grad``, has none either and is not marked), and a safe one:
# an unmarked value is priced, and sent, as one with a gradient (its zeros come back).
# How a cut sends the marked ones is [Note: one message per cut] in
# ``autopipe.runtime.packing``; how the plan prices it, ``Value.forward_only`` in
# ``autopipe.partition.problem``.


def _floating(dtype: str | None) -> bool:
    """Whether a value of this dtype may have a gradient (None: not one tensor, so it may)."""
    return dtype is None or "float" in dtype or "complex" in dtype


def no_grad_nodes(infos: Sequence[NodeInfo]) -> set[str]:
    """Names of the nodes, ``infos`` in topological order, whose values surely have no
    gradient ([Note: values without a gradient])."""
    out: set[str] = set()
    for n in infos:
        if n.op == "output":
            continue
        if not _floating(n.dtype) or (not n.params and not n.shared_params
                                      and all(i in out for i in n.inputs)):
            out.add(n.name)
    return out
