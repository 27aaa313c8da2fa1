"""Example inputs at another micro-batch size: dim 0 of the example's tensors is the batch.

``autopipe.plan(..., batch_size=B, microbatches="auto")`` profiles the model at each
micro-batch size ``b = B / m``. It makes those inputs from the example: every tensor
(in the positional and keyword inputs, inside tuples, lists and dicts too) whose
dim 0 equals the example's batch — dim 0 of its first tensor — is cut to ``b`` rows,
or tiled to ``b`` rows when ``b`` is bigger. Other tensors (a mask of shape
``(1, seq)`` with a batch of 4) and non-tensors stay as they are.
"""

from __future__ import annotations

from typing import Any

import torch

from autopipe.errors import SpecError


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def example_batch(args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> int:
    """The example micro-batch's size: dim 0 of its first tensor input.

    Raises:
        SpecError: no tensor input has a dim 0.
    """
    for t in _tensors((args, kwargs or {})):
        if t.dim() > 0:
            return int(t.shape[0])
    raise SpecError("the example inputs have no tensor with a batch dimension (dim 0)",
                    hint="give a micro-batch count instead of a batch size")


def _resize(value: Any, old: int, new: int) -> Any:
    if isinstance(value, torch.Tensor):
        if value.dim() == 0 or value.shape[0] != old:
            return value
        if new <= old:
            return value[:new]
        reps = -(-new // old)
        return value.repeat(reps, *([1] * (value.dim() - 1)))[:new]
    if isinstance(value, tuple):
        return tuple(_resize(v, old, new) for v in value)
    if isinstance(value, list):
        return [_resize(v, old, new) for v in value]
    if isinstance(value, dict):
        return {k: _resize(v, old, new) for k, v in value.items()}
    return value


def resize_batch(args: tuple[Any, ...], kwargs: dict[str, Any] | None,
                 size: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The example inputs with ``size`` samples instead of ``example_batch(args, kwargs)``."""
    if size < 1:
        raise SpecError(f"micro-batch size {size}", hint="use at least one sample per micro-batch")
    old = example_batch(args, kwargs)
    return _resize(tuple(args), old, size), _resize(dict(kwargs or {}), old, size)


def resize_target(target: Any, args: tuple[Any, ...], kwargs: dict[str, Any] | None, size: int) -> Any:
    """``target`` (one micro-batch's, of the example inputs ``args, kwargs``) cut or tiled
    along dim 0 as ``resize_batch`` resizes those inputs to ``size`` samples."""
    return _resize(target, example_batch(args, kwargs), size)
