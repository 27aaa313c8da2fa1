"""Random ops that draw the same numbers however the model is split: per node, step and micro-batch.

[Note: random draws per node and micro-batch]

A model with dropout (or noise, or sampled keys) draws from the process's generator in
the order its random ops run. Split into stages, the same ops run on other ranks, in
another order (1F1B interleaves micro-batches), each rank from its own generator: the
pipeline trained as well, but not on the numbers one process would draw, so no check could
compare the two, and a new plan changed the training run. Now each random node draws from
the generator seeded for it alone::

    seed(node) = blake2b("{seed}/{step}/{micro-batch}/{node name}")

``seed`` is the run's (``autopipe train --seed``, 0 by default), ``step`` counts from 1,
and the micro-batch is its index in the step's global batch (replica ``r`` of ``dp``, with
``m`` micro-batches each, runs global micro-batches ``r·m … r·m + m − 1``, the samples
``replica_share`` gives it). The node keeps its name in every stage (the split copies
nodes under their names), so the pipeline's stages, and ``reference_train`` running the
whole graph in one process, draw the same masks, whatever the plan: the stage count, the
schedule, the ranks and data-parallel replicas. A recomputed region draws again what its
forward drew (torch's checkpoint restores the generator too), and a run resumed from a
checkpoint draws as the run straight through.

Only the traced graph's nodes: the spec's loss and batch draw from the process's
generator as before. A node that passes its own ``generator=`` keeps it. Outside a
pipeline's step (a stage timed by itself, ``evaluate``'s forward-only pass) the op draws
from the process's generator, as it did. The process's generators (the CPU's and the
tensors' CUDA device's) are restored after each draw, so nothing else's numbers move.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

__all__ = ["Draws", "SeededDraw", "drawing", "seed_draws", "seeded_draws"]

_FUNCTIONS: frozenset[Callable[..., Any]] = frozenset({
    torch.rand, torch.randn, torch.randint, torch.randperm, torch.rand_like, torch.randn_like,
    torch.randint_like, torch.bernoulli, torch.normal, torch.multinomial, torch.poisson,
    torch.dropout, torch.feature_dropout, torch.alpha_dropout, torch.feature_alpha_dropout,
    torch.rrelu, torch.rrelu_, torch.native_dropout,
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout,
    F.rrelu, F.gumbel_softmax,
})
"""torch functions that draw (as ``symbolic_trace`` records them); ``torch.export``'s aten
ops say so themselves (``Tag.nondeterministic_seeded``)."""
_METHODS = frozenset({"bernoulli", "bernoulli_", "normal_", "uniform_", "random_", "exponential_",
                      "geometric_", "cauchy_", "log_normal_", "multinomial"})
"""Tensor methods that draw."""
_MODULES = (nn.modules.dropout._DropoutNd, nn.RReLU)
"""Leaf modules that draw (dropout in all its kinds, RReLU)."""

_current: tuple[int, int, int] | None = None
"""``(seed, step, micro-batch)`` of the forward or backward running now; None outside one.
A plain global, not a context variable: on CUDA the backward (and the recomputation in it)
runs on autograd's device thread."""


@contextlib.contextmanager
def drawing(seed: int, step: int, microbatch: int) -> Iterator[None]:
    """Within this, seeded random nodes draw for ``(seed, step, microbatch)``."""
    global _current
    before = _current
    _current = (seed, step, microbatch)
    try:
        yield
    finally:
        _current = before


@dataclass
class Draws:
    """A rank's random draws: the run's seed, the step now, its replica's first micro-batch."""

    seed: int = 0
    offset: int = 0
    """Global index of this replica's first micro-batch (replica × micro-batches)."""
    step: int = 0
    """The step running now (from 1; the pipe sets it)."""

    def microbatch(self, index: int) -> contextlib.AbstractContextManager[None]:
        """Draw for this replica's micro-batch ``index`` of the current step."""
        return drawing(self.seed, self.step, self.offset + index)


def _seed(key: str) -> int:
    assert _current is not None
    seed, step, microbatch = _current
    digest = hashlib.blake2b(f"{seed}/{step}/{microbatch}/{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _cuda_devices(args: Any, kwargs: dict[str, Any]) -> list[int]:
    found: set[int] = set()

    def visit(value: Any) -> None:
        if isinstance(value, str) and value.startswith("cuda"):  # device="cuda:1" as symbolic_trace keeps it
            value = torch.device(value)
        if isinstance(value, torch.Tensor) and value.device.type == "cuda":
            found.add(value.device.index or 0)
        elif isinstance(value, torch.device) and value.type == "cuda":
            found.add(value.index if value.index is not None else torch.cuda.current_device())
        elif isinstance(value, (list, tuple)):
            for v in value:
                visit(v)

    visit(args)
    visit(list(kwargs.values()))
    return sorted(found)


class SeededDraw:
    """A random node's op, drawing from generators seeded for the node and the micro-batch now."""

    def __init__(self, fn: Callable[..., Any], key: str) -> None:
        self.fn = fn
        self.key = key
        # fx's code generator names a call_function target by these
        self.__name__ = f"seeded_{key}"
        self.__module__ = __name__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if _current is None:
            return self.fn(*args, **kwargs)
        seed = _seed(self.key)
        cuda = _cuda_devices(args, kwargs)
        cpu_state = torch.get_rng_state()
        cuda_states = [torch.cuda.get_rng_state(d) for d in cuda]
        try:
            torch.default_generator.manual_seed(seed)
            for d in cuda:
                torch.cuda.default_generators[d].manual_seed(seed)
            return self.fn(*args, **kwargs)
        finally:
            torch.set_rng_state(cpu_state)
            for d, state in zip(cuda, cuda_states):
                torch.cuda.set_rng_state(state, d)

    def __repr__(self) -> str:
        return f"SeededDraw({self.key})"


def _draw_fn(gm: fx.GraphModule, node: fx.Node) -> Callable[..., Any] | None:
    """What ``node`` calls if it draws from the process's generator; None if it does not."""
    if node.kwargs.get("generator") is not None:
        return None
    if node.op == "call_function":
        target = node.target
        if not callable(target) or isinstance(target, SeededDraw):
            return None
        if isinstance(target, torch._ops.OpOverload):
            draws = torch.Tag.nondeterministic_seeded in target.tags
        else:
            draws = target in _FUNCTIONS
        return target if draws and not _draws_nothing(target, node) else None
    if node.op == "call_method" and node.target in _METHODS:
        return getattr(torch.Tensor, str(node.target))  # type: ignore[no-any-return]
    if node.op == "call_module":
        module = gm.get_submodule(str(node.target))
        if isinstance(module, _MODULES):
            return module
    return None


def traced_arguments(fn: Callable[..., Any], node: fx.Node) -> dict[str, Any]:
    """What ``node`` passes ``fn``, by parameter name, defaults filled in (keywords only for a
    builtin without a signature)."""
    values: dict[str, Any] = {}
    if isinstance(fn, torch._ops.OpOverload):
        arguments = fn._schema.arguments
        values = {a.name: a.default_value for a in arguments if a.has_default_value()}
        values.update({a.name: v for a, v in zip(arguments, node.args)})
    else:
        try:
            bound = inspect.signature(fn).bind_partial(*node.args, **node.kwargs)
        except (TypeError, ValueError):
            pass
        else:
            bound.apply_defaults()
            values = dict(bound.arguments)
    values.update(node.kwargs)
    return values


def _draws_nothing(fn: Callable[..., Any], node: fx.Node) -> bool:
    """An op that draws only with a nonzero probability or in training, given none: attention
    without dropout (``dropout_p=0.0``), ``dropout(x, p, train=False)``, ``F.dropout(x,
    training=False)``."""
    values = traced_arguments(fn, node)
    p = values.get("dropout_p", values.get("p"))
    return (isinstance(p, (int, float)) and p == 0) or values.get("train") is False \
        or values.get("training") is False


def seed_draws(module: nn.Module) -> list[tuple[fx.GraphModule, fx.Node, str, Any]]:
    """Make every random node of every GraphModule in ``module`` a ``SeededDraw``, in place.

    Returns:
        Each rewritten node with its GraphModule and what it was (``op``, ``target``).
    """
    was: list[tuple[fx.GraphModule, fx.Node, str, Any]] = []
    for gm in module.modules():
        if not isinstance(gm, fx.GraphModule):
            continue
        before = len(was)
        for node in gm.graph.nodes:
            fn = _draw_fn(gm, node)
            if fn is not None:
                was.append((gm, node, node.op, node.target))
                node.op, node.target = "call_function", SeededDraw(fn, node.name)
        if len(was) > before:
            gm.recompile()
    return was


@contextlib.contextmanager
def seeded_draws(module: nn.Module) -> Iterator[int]:
    """``seed_draws`` for the duration, the nodes put back after; yields how many draw."""
    was = seed_draws(module)
    try:
        yield len(was)
    finally:
        for _, node, op, target in was:
            node.op, node.target = op, target
        for gm in {id(gm): gm for gm, *_ in was}.values():
            gm.recompile()
