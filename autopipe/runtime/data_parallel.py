"""Data-parallel replicas of a pipeline: the pp × dp device mesh, each replica's share of a
batch, and the gradient sync over a stage's replicas.

::

    pp 2 × dp 2, placement "pipelines"        global batch: dp·m micro-batches
                  replica 0   replica 1        ┌──────────────┬──────────────┐
      pp rank 0    rank 0      rank 2          │ replica 0    │ replica 1    │
      pp rank 1    rank 1      rank 3          │ m micro-b.   │ m micro-b.   │
                                               └──────────────┴──────────────┘
      a column is a pipeline (pp group);       replica r takes samples
      a row is one stage's replicas (dp group) [r·B/dp, (r+1)·B/dp)

[Note: the data-parallel gradient sync]

After the schedule's backward, each replica's gradients are the mean over its own ``m``
micro-batches (``Pipe.step`` divides by ``m``). One sync per optimizer step then makes
every replica hold the mean over all ``dp·m`` micro-batches of the global batch, which is
what one process computes on it:

1. tied parameters (copies on several pipeline ranks of a replica): one all-reduce (sum)
   over every copy in every replica (``TiedParams`` over ``holders × replicas``), then
   ``/ dp``: the sum over a replica's holders is that replica's gradient, and the mean of
   those over the replicas is the global one. Doing it in one all-reduce instead of a
   tied sum and then a dp mean moves each tied gradient once.
2. every other parameter: an all-reduce (sum) over its stage's dp group, in flat buckets
   of one dtype (at most ``BUCKET_BYTES``), then ``/ dp``. Where the optimizer is sharded
   over the replicas (ZeRO-1), a reduce-scatter instead: each replica receives the mean
   of the pieces it steps ([Note: the sharded optimizer step] in ``autopipe.runtime.zero``).

Each sum is ``sum_over``: a group of two CPU ranks swaps its tensors and adds, faster
than gloo's all-reduce and bitwise the same ([Note: a pair's sum is a swap]).

A manual all-reduce of ``.grad`` rather than DDP or FSDP2 on the stage modules: DDP would
all-reduce inside the last micro-batch's backward, but ``Pipe.step`` divides the gradients
by ``m`` after the schedule and keeps gradients of earlier steps out of the sum, tied
copies need a sum over another group first, and zero-bubble schedules run the weight
gradients as separate actions that DDP's hooks do not see. After the schedule, sum then
divide, the result is exact (bitwise equal on every replica, so the replicas' optimizers
take identical steps), and it is what the planner prices: the all-reduce after a stage's
last backward, before its optimizer step ([Note: the data-parallel sync] in
``autopipe.partition.replicas``), without DDP's overlap with that backward.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from autopipe.errors import SpecError
from autopipe.plan_format import Plan
from autopipe.runtime.placement import grid_position, rank_grid
from autopipe.runtime.sum_over import sum_over
from autopipe.runtime.tied import TiedParams

BUCKET_BYTES = 25 * 2**20
"""Largest flat buffer of gradients one all-reduce carries (DDP's default bucket)."""


class Replicas:
    """This rank's place in the pp × dp grid of a plan, and the process groups along each side.

    Built on every rank with the same plan (creating the groups is collective). With one
    replica there is no mesh and both groups are None (the default group is the pipeline).

    Args:
        plan: the plan (its ``data_parallel`` places the replicas).
        rank: this process's global rank.
        device: where this rank computes (the mesh's device type).

    Raises:
        PlanError: the placement cannot be run (see ``rank_grid``).
    """

    def __init__(self, plan: Plan, rank: int, device: torch.device) -> None:
        self.grid = rank_grid(plan)
        """``grid[q][r]``: global rank of pipeline rank ``q`` in replica ``r``."""
        self.pp, self.dp = len(self.grid), len(self.grid[0])
        self.position, self.replica = grid_position(plan, rank)
        self.mesh: DeviceMesh | None = None
        """The ``("pp", "dp")`` device mesh (None with one replica)."""
        self.pp_group: dist.ProcessGroup | None = None
        """This replica's pipeline ranks, in stage order (None: the default group)."""
        self.dp_group: dist.ProcessGroup | None = None
        """This pipeline rank's replicas (None with one replica)."""
        if self.dp > 1:
            self.mesh = _mesh(device.type, self.grid)
            self.pp_group, self.dp_group = self.mesh.get_group("pp"), self.mesh.get_group("dp")

    def spread(self, holders: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
        """Name → pipeline ranks holding it, as the global ranks of those in every replica."""
        return {name: tuple(sorted(self.grid[q][r] for q in ranks for r in range(self.dp)))
                for name, ranks in holders.items()}

    def share(self, inputs: Sequence[Any], target: torch.Tensor) -> tuple[tuple[Any, ...], torch.Tensor]:
        """This replica's share of a global batch (``replica_share``)."""
        return replica_share(inputs, target, self.replica, self.dp)

    def mean_loss(self, losses: Sequence[torch.Tensor]) -> float:
        """The mean of the micro-batch losses over every replica (collective over the last
        stage's replicas: call it on each rank that runs the last stage)."""
        local = torch.stack([x.detach().float() for x in losses]).mean()
        if self.dp > 1:
            dist.all_reduce(local, group=self.dp_group)
            local = local / self.dp
        return float(local.item())


def replica_share(inputs: Sequence[Any], target: torch.Tensor, replica: int,
                  replicas: int) -> tuple[tuple[Any, ...], torch.Tensor]:
    """Replica ``r``'s share of a global batch of ``B`` samples: samples ``[r·B/dp, (r+1)·B/dp)``
    of the target and of each tensor input (dim 0); non-tensor inputs as they are.

    Raises:
        SpecError: a tensor's ``B`` does not split over the replicas.
    """
    def cut(value: Any) -> Any:
        if not isinstance(value, torch.Tensor) or replicas == 1:
            return value
        if value.shape[0] % replicas:
            raise SpecError(f"a batch of {value.shape[0]} samples does not split over {replicas} replicas",
                            hint=f"draw spec.batch(microbatches x {replicas}, step): the global batch")
        return torch.tensor_split(value, replicas)[replica]

    return tuple(cut(v) for v in inputs), cut(target)


def _mesh(device_type: str, grid: list[list[int]]) -> DeviceMesh:
    """The ``("pp", "dp")`` mesh of ``grid``: ``init_device_mesh`` where the ranks lie as it
    lays them out (``replicas`` placement: rank = stage·dp + replica), else the same mesh
    from the explicit rank grid (``pipelines``: rank = replica·pp + stage)."""
    pp, dp = len(grid), len(grid[0])
    if grid == [[q * dp + r for r in range(dp)] for q in range(pp)]:
        return init_device_mesh(device_type, (pp, dp), mesh_dim_names=("pp", "dp"))
    return DeviceMesh(device_type, torch.tensor(grid), mesh_dim_names=("pp", "dp"))


class ReplicaSync:
    """The gradient and value sync of one rank's parameters over their copies
    ([Note: the data-parallel gradient sync]).

    Args:
        replicas: this rank's place in the grid.
        tied: the tied copies, grouped over every replica (``Replicas.spread``).
        params: this rank's parameters by canonical name.
        buffers: this rank's persistent buffers (replica 0's values at the start).
    """

    def __init__(self, replicas: Replicas, tied: TiedParams, params: Mapping[str, nn.Parameter],
                 buffers: Mapping[str, torch.Tensor]) -> None:
        self.replicas = replicas
        self.tied = tied
        names = set(tied.names)
        self._tied_params = [p for n, p in params.items() if n in names]
        self._own = [p for n, p in params.items() if n not in names]
        self._buffers = list(buffers.values())
        self.scatter: Callable[[], None] | None = None
        """Averages the other gradients over the replicas in place of the all-reduce (a
        sharded optimizer's ``reduce_scatter_grads``); None: the all-reduce."""

    @torch.no_grad()
    def broadcast_values(self) -> None:
        """Start every copy equal: tied ones from their lowest holder, the rest from replica 0."""
        self.tied.broadcast_values()
        r = self.replicas
        if r.dp == 1:
            return
        src = r.grid[r.position][0]
        for bucket in _buckets([*self._own, *self._buffers]):
            flat = torch.cat([t.detach().reshape(-1) for t in bucket])
            dist.broadcast(flat, src=src, group=r.dp_group)
            _unflatten(flat, bucket)

    @torch.no_grad()
    def all_reduce_grads(self) -> None:
        """Sum tied gradients over their copies, and average every gradient over the replicas."""
        self.tied.all_reduce_grads()
        dp = self.replicas.dp
        if dp == 1:
            return
        for p in self._tied_params:
            if p.grad is not None:
                p.grad.div_(dp)
        if self.scatter is not None:
            self.scatter()
            return
        grads = [p.grad for p in self._own if p.grad is not None]
        for bucket in _buckets(grads):
            if len(bucket) == 1 and bucket[0].is_contiguous():
                sum_over(bucket[0], self.replicas.dp_group)  # no copy for a lone tensor
                bucket[0].div_(dp)
                continue
            flat = torch.cat([g.reshape(-1) for g in bucket])
            sum_over(flat, self.replicas.dp_group)
            _unflatten(flat.div_(dp), bucket)


def _buckets(tensors: Iterable[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Buckets of one dtype and device each, of at most ``BUCKET_BYTES`` (a larger tensor
    alone), in first-seen order: the same on every replica, so their collectives pair up."""
    out: list[list[torch.Tensor]] = []
    open_: dict[tuple[torch.dtype, torch.device], tuple[list[torch.Tensor], list[int]]] = {}
    for t in tensors:
        key = (t.dtype, t.device)
        size = t.numel() * t.element_size()
        bucket = open_.get(key)
        if bucket is None or bucket[1][0] + size > BUCKET_BYTES:
            bucket = ([], [0])
            open_[key] = bucket
            out.append(bucket[0])
        bucket[0].append(t)
        bucket[1][0] += size
    return out


def _unflatten(flat: torch.Tensor, like: Sequence[torch.Tensor]) -> None:
    offset = 0
    for t in like:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()
