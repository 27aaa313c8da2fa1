"""Tensors that ``forward`` makes from Python values while a meta-built model is traced: their values.

[Note: constants made while tracing on meta]
``torch.export`` lifts a tensor that ``forward`` makes from Python values (``torch.tensor``,
``torch.as_tensor``) into the graph as a constant, ``lifted_tensor_0``, held by the module
that made it. A model built on the meta device makes such tensors on meta too where it
asks for its weights' device, and a meta tensor has no values: a rank could not
materialise them (nor any initialiser set them; they are no parameter or buffer of the
model), and a meta-built LongT5, Gemma 3n or Decision Transformer was refused until
2026-12-07 (lines of transformers 5.25.0):

- LongT5's transient-global attention, ``torch.tensor(global_seq_len, dtype=block_ids.dtype,
  device=block_ids.device)`` (``_create_global_aggregates``, ``modeling_longt5.py:244``): the
  block id of padding, an int32 scalar;
- Gemma 3n's sparse MLP, ``torch.tensor(self.activation_sparsity, dtype=torch.float32,
  device=inputs.device)`` (``Gemma3nTextMLP._gaussian_topk``, ``modeling_gemma3n.py:960``): the
  sparsity whose normal quantile is the cut-off (the ``Normal(0, 1)`` beside it makes its own
  on the CPU, real);
- the Decision Transformer's GPT-2 attention, ``torch.tensor([], dtype=..., device=self.device)``
  (``DynamicLayer.lazy_initialization``, ``cache_utils.py:115-116``: its config asks for a
  cache, and these empty keys and values start it, each layer's two), empty.

So while a meta-built model is traced, each such call made on meta is made a second time
on the CPU, from the same Python values, and after the export every lifted constant that
is one of those meta tensors (by identity: export keeps the very tensor) is remembered
with its CPU twin (``constant_value``), which is what the same model built on the CPU
holds (there it is made on its weights' device). The graph keeps the meta tensor, as it
keeps meta weights: passes that run it on meta (``stage_metas``, estimates) would meet a
CPU tensor where export asserts a meta one (``_assert_tensor_metadata(device=meta)``).
A rank then gives the constant its value on its device when it materialises its stages
(``autopipe.runtime.materialize``), as it gives the weights theirs. The twins live as long
as the meta constants do (a weak table): a rank traces the model itself before it
materialises its stages, so the table holds what its graph holds. A call whose values are
tensors (``torch.as_tensor(t)``) is an op of the graph, not a constant. What is left on
meta and is no parameter or buffer of the model (a plain tensor attribute that a module
made on meta in its constructor: its values are lost) is refused when a rank materialises
its stage, naming the attribute.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import _disable_current_modes as dispatch_modes_off
from torch.utils.weak import WeakIdKeyDictionary

_FROM_VALUES: tuple[Callable[..., Any], ...] = (torch.tensor, torch.as_tensor, torch.asarray)
"""The calls that make a tensor from Python values (export lifts their results)."""

_KNOWN: WeakIdKeyDictionary = WeakIdKeyDictionary()
"""Meta constant of a traced graph → its CPU twin."""


@dataclass
class Made:
    """What the calls of ``_FROM_VALUES`` made on meta while tracing, by the meta tensor's id."""

    tensors: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    """id → (the meta tensor, kept alive so that ids stay unique; its CPU twin)."""


class _Recorder(TorchFunctionMode):
    def __init__(self, made: Made) -> None:
        super().__init__()
        self.made = made

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if (func in _FROM_VALUES and isinstance(out, torch.Tensor) and out.device.type == "meta"
                and not any(isinstance(x, torch.Tensor) for x in pytree.tree_leaves((args, kwargs)))):
            # export's fake and proxy modes off: a real tensor, no node. Where the CPU refuses the
            # call there is no twin, and a stage holding the constant is refused by name.
            with contextlib.suppress(Exception), dispatch_modes_off():
                self.made.tensors[id(out)] = (out, func(*args, **{**kwargs, "device": "cpu"}))
        return out


@contextlib.contextmanager
def constants_recorded(on_meta: bool) -> Iterator[Made]:
    """Within this block (only ``on_meta``: the model is on meta), record the tensors that
    ``forward`` makes from Python values on meta, with their CPU twins."""
    made = Made()
    if not on_meta:
        yield made
        return
    with _Recorder(made):
        yield made


def remember_constants(gm: fx.GraphModule, made: Made) -> None:
    """Remember the CPU twin of each lifted meta constant of ``gm`` that ``made`` recorded
    ([Note: constants made while tracing on meta])."""
    for n in gm.graph.nodes:
        if n.op != "get_attr":
            continue
        path, _, leaf = str(n.target).rpartition(".")
        value = vars(gm.get_submodule(path)).get(leaf)
        if isinstance(value, torch.Tensor) and value.is_meta and id(value) in made.tensors:
            _KNOWN[value] = made.tensors[id(value)][1]


def constant_value(t: torch.Tensor) -> torch.Tensor | None:
    """The value (on the CPU) of ``t``, a meta constant made while tracing; None where ``t``
    is none such."""
    twin: torch.Tensor | None = _KNOWN.get(t)  # type: ignore[no-untyped-call]  # (torch's is untyped)
    return twin
