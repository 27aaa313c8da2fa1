"""Moving a GraphModule to another device or dtype without touching the user's model."""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch import nn


def module_tensors(gm: nn.Module) -> list[torch.Tensor]:
    """Every parameter, buffer and plain tensor attribute of ``gm`` and its submodules, once each."""
    seen: dict[int, torch.Tensor] = {}
    for mod in gm.modules():
        values = [*mod._parameters.values(), *mod._buffers.values(),
                  *(v for v in vars(mod).values() if isinstance(v, torch.Tensor))]
        for t in values:
            if t is not None:
                seen.setdefault(id(t), t)
    return list(seen.values())


def float_dtype(gm: nn.Module) -> torch.dtype:
    """The most common floating dtype among the parameters (float32 when there are none)."""
    counts: dict[torch.dtype, int] = {}
    for p in gm.parameters():
        if p.is_floating_point():
            counts[p.dtype] = counts.get(p.dtype, 0) + p.numel()
    return max(counts, key=lambda d: counts[d]) if counts else torch.float32


def copy_to(gm: fx.GraphModule, device: torch.device, dtype: torch.dtype | None) -> fx.GraphModule:
    """A copy of ``gm`` with its tensors on ``device`` and floating ones cast to ``dtype``.

    Tied parameters stay tied. On ``meta`` nothing is allocated or copied. Device and
    dtype arguments baked into the graph by tracing (``arange(..., device=cpu)``, an
    ``_assert_tensor_metadata(dtype=float32)``) are pointed at the new device and dtype.
    """
    memo: dict[int, Any] = {}
    for t in module_tensors(gm):
        cast = dtype if (dtype is not None and t.is_floating_point()) else t.dtype
        new = torch.empty_like(t, device=device, dtype=cast) if device.type == "meta" else \
            t.detach().to(device=device, dtype=cast, copy=True)
        if isinstance(t, nn.Parameter):
            new = nn.Parameter(new, requires_grad=t.requires_grad)
        memo[id(t)] = new
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's pytree specs warn when copied
        new_gm: fx.GraphModule = copy.deepcopy(gm, memo)
    traced = float_dtype(gm)
    _retarget(new_gm, device, {traced: dtype} if dtype is not None else {})
    return new_gm


def _retarget(gm: fx.GraphModule, device: torch.device, dtypes: dict[torch.dtype, torch.dtype]) -> None:
    def fix(x: Any) -> Any:
        if isinstance(x, torch.device):
            return device
        if isinstance(x, torch.dtype):
            return dtypes.get(x, x)
        return x

    # higher-order ops (torch.export's wrap_with_set_grad_enabled around a no_grad
    # region, in torch 2.11) hold their body as a sub-GraphModule: retarget those too
    for sub in gm.modules():
        if isinstance(sub, fx.GraphModule):
            for n in sub.graph.nodes:
                n.args = fx.node.map_aggregate(n.args, fix)
                n.kwargs = fx.node.map_aggregate(n.kwargs, fix)
            sub.recompile()


def cast_input(x: Any, device: torch.device, dtype: torch.dtype | None) -> Any:
    """An input moved to ``device``; floating tensors cast to ``dtype``. The tensors inside a
    dict, list or tuple input too (until 2026-12-07 they stayed where they were: an estimate
    of a model taking a dict of tensors failed with "Tensor on device meta is not on the
    expected device cpu")."""
    def one(t: torch.Tensor) -> torch.Tensor:
        cast = dtype if (dtype is not None and t.is_floating_point()) else t.dtype
        if device.type == "meta":
            return torch.empty_like(t, device=device, dtype=cast)
        return t.detach().to(device=device, dtype=cast)
    return pytree.tree_map_only(torch.Tensor, one, x)


def fresh_inputs(flat: list[Any]) -> list[Any]:
    """Copies of the tensors of one micro-batch (inside dicts and lists too), for a run that
    may write its inputs in place.

    The user's example tensors, and the inputs of the next run, keep their values
    ([Note: in-place writes while profiling] in ``_mutation.py``).
    """
    return [pytree.tree_map_only(torch.Tensor, lambda t: t.detach().clone().requires_grad_(t.requires_grad), x)
            for x in flat]
