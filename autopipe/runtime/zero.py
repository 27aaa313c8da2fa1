"""ZeRO-1: each stage's optimizer states split over its data-parallel replicas.

::

    one stage's dp group, 2 replicas         after the gradient all-reduce (every replica
      params  a (4 MiB)  b (3 MiB)  c (2 MiB)  holds every gradient, averaged):
      owner   replica 0  replica 1  replica 1    replica 0 steps a, replica 1 steps b, c
                                                 (its optimizer holds their states only),
                                                 then a is broadcast from replica 0, b and
                                                 c from replica 1

[Note: the sharded optimizer step]
A plan made with ``--shard-optimizer`` (``data_parallel.shard_optimizer``) charges each
rank 1/dp of its stage's optimizer states and fp32 master weights, and 1/dp of the step
([Note: the data-parallel sync] in ``autopipe.partition.replicas``). Each parameter has one
owner among the stage's replicas (``owners``: whole tensors, the largest first, each to
the replica that owns the fewest bytes so far, ties to the lower replica: the same on
every replica); a rank's optimizer is built on the parameters it owns only, so its
states and masters exist there alone. The gradients stay whole: gloo has no
reduce-scatter, so the all-reduce of ``ReplicaSync`` stays, which also keeps
``Pipe.clip_grad_norm_`` the norm over the whole model as before. After the owners step,
each parameter is broadcast from its owner over the group (in buckets of one dtype, one
owner each), so every replica holds the value the owner computed: the value an unsharded
replica computes itself from the same gradient and state, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from autopipe._optimizers import Stepper, clear_grads
from autopipe.runtime.data_parallel import Replicas, _buckets, _unflatten


def owners(sizes: Mapping[str, int], replicas: int) -> dict[str, int]:
    """Name → the replica that owns it: whole tensors, greedily balanced by bytes.

    The largest first (ties in the mapping's order), each to the replica owning the fewest
    bytes so far (ties to the lowest replica): deterministic, so every replica agrees.

    Args:
        sizes: each parameter's bytes, in the order every replica holds them.
        replicas: the data-parallel degree.
    """
    load = [0] * replicas
    out: dict[str, int] = {}
    for _, name in sorted(((-size, i), name) for i, (name, size) in enumerate(sizes.items())):
        r = min(range(replicas), key=lambda k: (load[k], k))
        out[name] = r
        load[r] += sizes[name]
    return {name: out[name] for name in sizes}


class ShardedOptimizer:
    """One rank's share of its stage's optimizer ([Note: the sharded optimizer step]).

    Args:
        replicas: this rank's place in the pp × dp grid (its dp group shares the states).
        params: this rank's parameters by canonical name, in the order every replica holds them.
        build: makes an optimizer over the parameters given (None where it makes none).
    """

    def __init__(self, replicas: Replicas, params: Mapping[str, nn.Parameter],
                 build: Callable[[list[nn.Parameter]], Stepper | None]) -> None:
        self.replicas = replicas
        trained = {n: p for n, p in params.items() if p.requires_grad}
        self.owner = owners({n: p.numel() * p.element_size() for n, p in trained.items()}, replicas.dp)
        """Parameter name → the replica that steps it."""
        self.params = list(trained.values())
        self.owned_names = tuple(n for n in trained if self.owner[n] == replicas.replica)
        """Names of the parameters this rank steps."""
        self.owned = [trained[n] for n in self.owned_names]
        """The parameters this rank steps (its optimizer's)."""
        self._by_owner = [[p for n, p in trained.items() if self.owner[n] == r] for r in range(replicas.dp)]
        self.inner: Stepper | None = build(self.owned) if self.owned else None
        """The optimizer over ``owned`` (None where this rank owns none)."""

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear every parameter's gradient, owned or not."""
        clear_grads(self.params, set_to_none)

    def step(self) -> None:
        """Step the owned parameters, then give every replica each owner's values (collective
        over the dp group: every replica calls it)."""
        if self.inner is not None:
            self.inner.step()
        self.broadcast()

    @torch.no_grad()
    def broadcast(self) -> None:
        """Each parameter from its owner to the other replicas of the group."""
        r = self.replicas
        for replica, held in enumerate(self._by_owner):
            src = r.grid[r.position][replica]
            for bucket in _buckets(held):
                if len(bucket) == 1 and bucket[0].is_contiguous():
                    dist.broadcast(bucket[0].detach(), src=src, group=r.dp_group)  # in place, no copy
                    continue
                flat = torch.cat([t.detach().reshape(-1) for t in bucket])
                dist.broadcast(flat, src=src, group=r.dp_group)
                if replica != r.replica:
                    _unflatten(flat, bucket)

    def state_bytes(self) -> int:
        """Bytes of this rank's optimizer states and fp32 master copies."""
        return optimizer_bytes(self.inner)


def optimizer_bytes(optimizer: Any) -> int:
    """Bytes an optimizer holds beyond the parameters: its states and master copies
    (``MasterWeights``, ``ShardedOptimizer`` or a torch optimizer; 0 for None)."""
    if optimizer is None:
        return 0
    if isinstance(optimizer, ShardedOptimizer):
        return optimizer.state_bytes()
    inner = getattr(optimizer, "inner", optimizer)
    total = 0
    masters = getattr(optimizer, "masters", None)
    if masters is not None:
        total += sum(m.numel() * m.element_size() for m, p in zip(masters, optimizer.params) if m is not p)
    if isinstance(inner, torch.optim.Optimizer):
        for state in inner.state.values():
            total += sum(v.numel() * v.element_size() for v in state.values() if isinstance(v, torch.Tensor))
    return total
