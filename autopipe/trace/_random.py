"""Random tensors made from constants inside ``forward`` kept as graph nodes under ``symbolic_trace``.

[Note: draws from constant arguments]
``symbolic_trace`` records a call only when an argument is a Proxy (a traced value). A draw
whose arguments are all constants, ``torch.rand([])`` as Hugging Face's LayerDrop and many
a stochastic-depth block write it, ran once while tracing, and its one value was baked
into the graph as a ``_tensor_constant``: every step of every rank then multiplied by the
same "random" number, silently (measured 2026-12-07: ``(torch.rand([]) > 0.5).float()``
traced to ``get_attr _tensor_constant0``). While tracing, the random factories in
``FACTORIES`` are therefore replaced by wrappers that record a ``call_function`` node of
the real function when no argument is traced (a traced argument is recorded by torch's
own dispatch, as before), restored afterwards. The node draws on every call, per node,
step and micro-batch as any other ([Note: random draws per node and micro-batch] in
``autopipe.runtime.draws``). ``torch.export`` records such draws itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.fx as fx
from torch.utils._pytree import tree_flatten

FACTORIES = ("rand", "randn", "randint", "randperm", "normal", "poisson", "bernoulli", "multinomial")
"""``torch`` functions that draw and may be called with constant arguments only."""


@contextlib.contextmanager
def draws_recorded(tracer: fx.Tracer) -> Iterator[None]:
    """Within this block, a draw from constant arguments becomes a node of ``tracer``'s graph."""
    originals = {name: getattr(torch, name) for name in FACTORIES}

    def recorder(fn: Any) -> Any:
        def record(*args: Any, **kwargs: Any) -> Any:
            flat, _ = tree_flatten((args, kwargs))
            if any(isinstance(a, fx.Proxy) for a in flat):
                return fn(*args, **kwargs)  # torch's dispatch records it
            return tracer.create_proxy("call_function", fn, args, kwargs)
        return record

    try:
        for name, fn in originals.items():
            setattr(torch, name, recorder(fn))
        yield
    finally:
        for name, fn in originals.items():
            setattr(torch, name, fn)


def symbolic_trace(model: torch.nn.Module) -> fx.GraphModule:
    """``torch.fx.symbolic_trace``, with draws from constant arguments kept as nodes."""
    tracer = fx.Tracer()
    with draws_recorded(tracer):
        graph = tracer.trace(model)
    return fx.GraphModule(tracer.root, graph, model.__class__.__name__)
