"""Ops whose training mode was traced in, made to follow ``train()`` and ``eval()`` again.

[Note: traced modes follow train and eval]

``torch.export`` writes the mode a model was traced in into its ops: ``nn.Dropout`` becomes
``aten.dropout(x, p, train=True)``, ``nn.BatchNorm2d`` ``aten.batch_norm(..., training=True,
...)``, and a Hugging Face attention ``scaled_dot_product_attention(..., dropout_p=0.1)``
(its Python picks ``dropout_p`` from ``self.training``); ``symbolic_trace`` does the same for
``F.dropout(x, training=self.training)``. A stage in evaluation mode (``pipe.train(False)``)
then still dropped activations, and its batch norms normalised by the batch and moved their
running statistics, where the model in ``eval()`` does neither. So every op with a boolean
``train``/``training`` argument, or a ``dropout_p``, takes it from its GraphModule's own
``training`` flag when it runs::

    before   dropout = aten.dropout(x, 0.1, True)
    after    training = self.training
             dropout = follows_mode(x, 0.1, True, module_training=training)
                       # aten.dropout(x, 0.1, True and training)

A flag traced ``False`` stays ``False``; ``dropout_p`` becomes 0 in evaluation; a batch norm
without running statistics normalises by the batch in both modes, as ``nn.BatchNorm`` does.
Batch norm's ``num_batches_tracked.add_(1)``, which its Python runs in training only, is
skipped in evaluation. In training mode every op runs as traced. Not switched: a branch of the model's own Python
on ``self.training`` (drop path's ``if not training: return x``, a router's jitter) was
traced as the model ran, in training; ``Pipe.train(False)`` warns about the random nodes
that stay on so.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from autopipe.runtime.draws import SeededDraw, traced_arguments

__all__ = ["FollowsMode", "follow_modes", "modeless_draws"]

_FLAGS = ("train", "training")
_KWARG = "module_training"


def _parameters(fn: Callable[..., Any]) -> list[str] | None:
    """The names of ``fn``'s parameters in order; None where it has no signature."""
    if isinstance(fn, torch._ops.OpOverload):
        return [a.name for a in fn._schema.arguments]
    try:
        return list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return None


class FollowsMode:
    """An op whose traced training flag (or attention dropout) follows its module's mode."""

    def __init__(self, fn: Callable[..., Any], names: list[str], argument: str | None) -> None:
        self.fn = fn
        self.argument = argument
        """``train``, ``training`` or ``dropout_p``; None: the op runs in training only (in
        evaluation it returns its first argument as it is)."""
        self.index = -1 if argument is None else names.index(argument)
        self.stats = names.index("running_mean") if "running_mean" in names else None
        base = fn.fn if isinstance(fn, SeededDraw) else fn
        # fx's code generator names a call_function target by these
        self.__name__ = f"follows_mode_{getattr(base, '__name__', 'op').replace('.', '_')}"
        self.__module__ = __name__

    def _get(self, args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str) -> Any:
        return kwargs[name] if name in kwargs else args[index] if index < len(args) else None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        training = kwargs.pop(_KWARG)
        if training:
            return self.fn(*args, **kwargs)
        if self.argument is None:
            return args[0]
        value = self._get(args, kwargs, self.index, self.argument)
        if self.argument == "dropout_p":
            new: Any = 0.0 if value is not None else None
        else:
            batch_stats = self.stats is not None and self._get(args, kwargs, self.stats, "running_mean") is None
            new = bool(value) and batch_stats
        if value is None or new == value:
            return self.fn(*args, **kwargs)
        if self.argument in kwargs:
            kwargs[self.argument] = new
        else:
            args = (*args[:self.index], new, *args[self.index + 1:])
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"FollowsMode({self.fn!r}, {self.argument})"


def _counts_batches(node: fx.Node) -> bool:
    """``num_batches_tracked.add_(1)``: batch norm's count of training batches, which its
    Python adds ``if self.training`` (traced in)."""
    first = node.args[0] if node.args else None
    return (node.target in (torch.ops.aten.add_.Tensor, torch.ops.aten.add_.Scalar)
            and isinstance(first, fx.Node) and first.op == "get_attr"
            and str(first.target).rsplit(".", 1)[-1] == "num_batches_tracked")


def _mode_argument(node: fx.Node) -> tuple[Callable[..., Any], list[str], str | None] | None:
    """The op, its parameter names and the argument that carries the traced mode (None: the
    op is training's alone); None if it carries none."""
    if node.op != "call_function" or not callable(node.target) or isinstance(node.target, FollowsMode):
        return None
    fn = node.target
    if _counts_batches(node):
        return fn, [], None
    base = fn.fn if isinstance(fn, SeededDraw) else fn
    names = _parameters(base)
    if names is None:
        return None
    for argument in (*_FLAGS, "dropout_p"):
        if argument in names:
            traced = traced_arguments(base, node).get(argument)
            # traced off (attention without dropout, a flag traced False): nothing to switch
            return None if traced is None or traced is False or traced == 0 else (fn, names, argument)
    return None


def follow_modes(module: nn.Module) -> int:
    """Make every op of every GraphModule in ``module`` that carries a traced mode follow the
    GraphModule's ``training`` flag, in place; returns how many do."""
    count = 0
    for gm in module.modules():
        if not isinstance(gm, fx.GraphModule):
            continue
        found = [(node, found) for node in gm.graph.nodes if (found := _mode_argument(node)) is not None]
        if not found:
            continue
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        with gm.graph.inserting_after(placeholders[-1]) if placeholders else gm.graph.inserting_before(), \
                warnings.catch_warnings():
            # ``training`` is a plain attribute, not a parameter, buffer or submodule, so fx warns
            # that it has "no underlying reference"; ``self.training`` is what the code reads
            warnings.filterwarnings("ignore", message="Attempted to insert a get_attr Node")
            training = gm.graph.get_attr("training")
        for node, (fn, names, argument) in found:
            node.target = FollowsMode(fn, names, argument)
            node.kwargs = {**node.kwargs, _KWARG: training}
        gm.recompile()
        count += len(found)
    return count


def modeless_draws(module: nn.Module) -> list[str]:
    """The seeded random nodes in ``module``'s GraphModules that no mode switches off (drop
    path's ``rand``, a router's jitter: traced in training, they draw in evaluation too)."""
    return [node.name for gm in module.modules() if isinstance(gm, fx.GraphModule)
            for node in gm.graph.nodes if isinstance(node.target, SeededDraw)]
