"""Parameters held by several ranks (tied embeddings, reused modules): start equal, stay equal.

What DeepSpeed's ``TiedLayerSpec`` does: every rank whose stages read a replicated
parameter keeps its own copy; the owners broadcast the lowest rank's value once, and
after each backward they sum the copies' gradients (``sum_over``), so that identical
optimizers then take identical steps and the copies never drift apart.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import nn

from autopipe.runtime.grad_accum import rows_only
from autopipe.runtime.sum_over import sum_over, sum_rows_over
from autopipe.trace.graph import Graph


def canonical_names(graph: Graph) -> dict[str, str]:
    """Attribute path → canonical parameter name (the first name of its tie group)."""
    out = {}
    for group in graph.tied:
        for alias in group:
            out[alias] = group[0]
    return out


def stage_params(module: nn.Module, canonical: Mapping[str, str]) -> dict[str, nn.Parameter]:
    """A stage module's parameters under their canonical names (each once)."""
    out: dict[str, nn.Parameter] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        out.setdefault(canonical.get(name, name), p)
    return out


def replicated(holders: Mapping[str, Iterable[int]]) -> dict[str, tuple[int, ...]]:
    """Canonical parameter name → the ranks that hold a copy, for parameters on more than one rank."""
    return {name: tuple(sorted(set(ranks))) for name, ranks in sorted(holders.items())
            if len(set(ranks)) > 1}


class TiedParams:
    """Keeps the copies of replicated parameters equal across ranks.

    Must be built on every rank (process groups are created collectively), with the
    same ``groups``, after the default process group is initialised.

    Args:
        groups: canonical name → ranks holding it (from ``replicated``), identical on all ranks.
        mine: this rank's parameters by canonical name.
    """

    def __init__(self, groups: Mapping[str, Sequence[int]], mine: Mapping[str, nn.Parameter]) -> None:
        self.rank = dist.get_rank()
        by_ranks: dict[tuple[int, ...], list[str]] = defaultdict(list)
        for name, ranks in sorted(groups.items()):
            by_ranks[tuple(ranks)].append(name)
        # every rank creates every group, in the same order (new_group is collective)
        self._groups: list[tuple[tuple[int, ...], dist.ProcessGroup | None, list[nn.Parameter]]] = []
        for ranks, names in sorted(by_ranks.items()):
            group = None if len(ranks) == dist.get_world_size() else dist.new_group(list(ranks))
            if self.rank in ranks:
                self._groups.append((ranks, group, [mine[n] for n in names]))
        self.names = sorted(groups)

    def __len__(self) -> int:
        return len(self.names)

    @torch.no_grad()
    def broadcast_values(self) -> None:
        """Give every copy the value held by the lowest rank of its group."""
        for ranks, group, params in self._groups:
            for bucket in _by_dtype(params):
                flat = torch.cat([p.detach().reshape(-1) for p in bucket])
                dist.broadcast(flat, src=ranks[0], group=group)
                for p, v in zip(bucket, _split(flat, bucket)):
                    p.copy_(v)

    @torch.no_grad()
    def all_reduce_grads(self) -> None:
        """Sum the gradients of every copy, in place on each copy (a missing gradient counts as zero)."""
        for _ranks, group, params in self._groups:
            for bucket in _by_dtype(params):
                missing = {id(p) for p in bucket if p.grad is None}
                for p in bucket:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                grads = [p.grad for p in bucket if p.grad is not None]
                if len(grads) == 1 and grads[0].is_contiguous():
                    # no copy for a lone tensor; an embedding's sends its rows only
                    # ([Note: a tied embedding's rows] in autopipe.runtime.sum_over)
                    rows = _NO_ROWS if missing else rows_only(grads[0])
                    sum_rows_over(grads[0], rows, group)
                    continue
                flat = torch.cat([g.reshape(-1) for g in grads])
                sum_over(flat, group)
                for g, v in zip(grads, _split(flat, grads)):
                    g.copy_(v)


_NO_ROWS = torch.zeros(0, dtype=torch.int64)
"""A missing gradient: zero in every row."""


def _split(flat: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    out, offset = [], 0
    for t in like:
        out.append(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()
    return out


def _by_dtype(params: Sequence[nn.Parameter]) -> list[list[nn.Parameter]]:
    """Buckets of one dtype each, in first-seen order (one collective per bucket)."""
    buckets: dict[torch.dtype, list[nn.Parameter]] = {}
    for p in params:
        buckets.setdefault(p.dtype, []).append(p)
    return list(buckets.values())
