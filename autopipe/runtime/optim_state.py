"""An optimizer's state keyed by the unsplit model's parameter names, and back.

torch's ``Optimizer.state_dict()`` numbers parameters by their position in this rank's
param groups, which means nothing to another rank or another plan. Here every entry is
named by the parameter it belongs to, so a checkpoint saved by one plan loads into another:

    optim/<fqn>/<state>       a state entry (Adam's ``exp_avg``, ``step``; SGD's ``momentum_buffer``)
    optim_group/<fqn>         the hyperparameters of the parameter's group (lr, betas, ...)
    master/<fqn>              the fp32 master copy of a 16-bit parameter ([Note: master weights])

A sharded optimizer ([Note: the sharded optimizer step] in ``autopipe.runtime.zero``) that
steps part of a parameter names its entries ``<fqn>[start:stop]``: the elements of the
flattened parameter that piece covers, its tensors flat. Loading puts a parameter's pieces
back together, whichever replicas saved them, and takes from the whole what the loading
optimizer steps, so a checkpoint loads into another plan, sharded or not.

Parameter names never hold ``/`` or ``[``, so the keys split unambiguously.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from autopipe._optimizers import MasterWeights
from autopipe.errors import CheckpointError
from autopipe.runtime.zero import ShardedOptimizer

STATE, GROUP, MASTER = "optim/", "optim_group/", "master/"


def _parts(optimizer: Any) -> tuple[torch.optim.Optimizer, dict[int, nn.Parameter]]:
    """(the torch optimizer, id of each tensor it updates → the model parameter it stands for)."""
    if isinstance(optimizer, MasterWeights):
        return optimizer.inner, {id(m): p for p, m in zip(optimizer.params, optimizer.masters)}
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer, {id(p): p for g in optimizer.param_groups for p in g["params"]}
    raise CheckpointError(f"cannot save the state of a {type(optimizer).__name__}",
                          hint="use a torch.optim optimizer (or autopipe's own)")


def _names(optimizer: Any, named: Mapping[str, nn.Parameter]) -> tuple[torch.optim.Optimizer, list[list[tuple[str, torch.Tensor]]]]:
    """The torch optimizer and, per param group, (name, the tensor it updates) in order."""
    inner, stands_for = _parts(optimizer)
    name_of = {id(p): name for name, p in named.items()}
    groups = []
    for group in inner.param_groups:
        pairs = []
        for t in group["params"]:
            name = name_of.get(id(stands_for[id(t)]))
            if name is None:
                raise CheckpointError(f"the optimizer updates a tensor of shape {tuple(t.shape)} that is "
                                      f"not a parameter of this rank's stages",
                                      hint="build the optimizer over pipe.parameters()")
            pairs.append((name, t))
        groups.append(pairs)
    return inner, groups


def optimizer_state(optimizer: Any, named: Mapping[str, nn.Parameter]) -> dict[str, Any]:
    """The optimizer's state, every entry named by its parameter (see the module docstring).

    Args:
        optimizer: a ``torch.optim.Optimizer`` or autopipe's ``MasterWeights``.
        named: this rank's parameters by name (``pipe.named_parameters()``).

    Raises:
        CheckpointError: the optimizer updates tensors that are not among ``named``.
    """
    if isinstance(optimizer, ShardedOptimizer):  # its owner's states: each rank saves its own pieces'
        named = optimizer.named_pieces()
        optimizer = optimizer.inner
        if optimizer is None:
            return {}
    inner, groups = _names(optimizer, named)
    out: dict[str, Any] = {}
    for group, pairs in zip(inner.param_groups, groups):
        hyper = {k: v for k, v in group.items() if k != "params"}
        for name, t in pairs:
            out[GROUP + name] = hyper
            for key, value in inner.state.get(t, {}).items():
                out[f"{STATE}{name}/{key}"] = value
            if isinstance(optimizer, MasterWeights) and t is not named[name]:
                out[MASTER + name] = t.detach()
    return out


def load_optimizer_state(optimizer: Any, named: Mapping[str, nn.Parameter], state: Mapping[str, Any]) -> None:
    """Load what ``optimizer_state`` made (possibly on another plan) into ``optimizer``.

    Entries of parameters this rank does not hold are ignored; a parameter without
    entries keeps a fresh state. Hyperparameters of a group come from its first
    parameter's entry.

    Raises:
        CheckpointError: the state is another kind of optimizer's (Adam given SGD's momenta).
    """
    shapes = {name: p.shape for name, p in named.items()}
    pieces: dict[str, range] = {}
    if isinstance(optimizer, ShardedOptimizer):  # the states of the pieces this rank steps
        named = optimizer.named_pieces()
        pieces = {x.label: range(x.start, x.stop) for x in optimizer.pieces if not x.whole}
        optimizer = optimizer.inner
        if optimizer is None:
            return
    inner, groups = _names(optimizer, named)
    per_param, masters, hypers = _whole(state, shapes)

    def take(label: str, value: Any) -> Any:  # a piece's part of a whole parameter's tensor
        rows = pieces.get(label)
        name = param_of(label)
        if rows is None or not isinstance(value, torch.Tensor) or value.numel() != shapes[name].numel():
            return value
        return value.reshape(-1)[rows.start:rows.stop].clone()

    torch_state = inner.state_dict()
    flat_ids = iter(range(sum(len(p) for p in groups)))
    torch_state["state"] = {}
    for group, pairs in zip(torch_state["param_groups"], groups):
        hyper = hypers.get(param_of(pairs[0][0])) if pairs else None
        if isinstance(hyper, Mapping):
            group.update({k: v for k, v in hyper.items() if k != "params"})
        for label, _t in pairs:
            index = next(flat_ids)
            if param_of(label) in per_param:
                torch_state["state"][index] = {k: take(label, v) for k, v in per_param[param_of(label)].items()}
    try:
        inner.load_state_dict(torch_state)
    except (KeyError, ValueError, TypeError, RuntimeError) as e:  # Adam given SGD's state: KeyError 'step'
        saved = sorted({entry for entries in per_param.values() for entry in entries})
        raise CheckpointError(f"the checkpoint's optimizer state ({', '.join(saved)}) does not fit this "
                              f"{type(inner).__name__} ({type(e).__name__}: {e})",
                              hint="load it into the kind of optimizer that saved it (autopipe train: the "
                                   "same --optimizer), or pass optimizer=None to load the model alone") from None
    if isinstance(optimizer, MasterWeights):
        with torch.no_grad():
            for pairs in groups:
                for label, t in pairs:
                    master = masters.get(param_of(label))
                    if isinstance(master, torch.Tensor) and t is not named[label]:
                        t.copy_(take(label, master).view_as(t))


def param_of(label: str) -> str:
    """The parameter a key's name part is of: ``w[0:64]`` → ``w``."""
    return label.split("[", 1)[0]


def _whole(state: Mapping[str, Any], shapes: Mapping[str, torch.Size]
           ) -> tuple[dict[str, dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """Per parameter: its states, its master copy and its group's hyperparameters, each
    parameter's pieces put back together (flat tensors concatenated by their ranges, in
    the parameter's shape; a scalar entry, as Adam's ``step``, from its first piece)."""
    entries: dict[str, dict[str, dict[int, Any]]] = {}
    masters: dict[str, dict[int, Any]] = {}
    hypers: dict[str, Any] = {}
    for key, value in state.items():
        if key.startswith(STATE):
            label, _, entry = key[len(STATE):].rpartition("/")
            entries.setdefault(param_of(label), {}).setdefault(entry, {})[_start(label)] = value
        elif key.startswith(MASTER):
            label = key[len(MASTER):]
            masters.setdefault(param_of(label), {})[_start(label)] = value
        elif key.startswith(GROUP) and _start(key[len(GROUP):]) == 0:
            hypers[param_of(key[len(GROUP):])] = value

    def join(name: str, parts: dict[int, Any]) -> Any:
        values = [parts[k] for k in sorted(parts)]
        if len(values) == 1 or not all(isinstance(v, torch.Tensor) and v.dim() == 1 for v in values):
            return values[0]
        flat = torch.cat(values)
        return flat.view(shapes[name]) if name in shapes and flat.numel() == shapes[name].numel() else flat

    per_param = {name: {entry: join(name, parts) for entry, parts in by_entry.items()}
                 for name, by_entry in entries.items()}
    return per_param, {name: join(name, parts) for name, parts in masters.items()}, hypers


def _start(label: str) -> int:
    """Where a piece's range starts (0 for a whole parameter)."""
    _, bracket, rest = label.partition("[")
    return int(rest.split(":", 1)[0]) if bracket else 0
