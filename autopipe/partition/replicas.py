"""Data-parallel replicas of a pipeline: where each (stage, replica) runs, and what syncing costs.

``p`` stages × ``dp`` replicas run on ``N = p·dp`` GPUs, ``G`` per node; global rank
``r`` lives on node ``r // G``. Two placements (``PLACEMENTS``)::

    "pipelines": rank = replica·p + stage      "replicas": rank = stage·dp + replica
    (a pipeline's neighbours share a node)     (a stage's replicas share a node)

      p = 4, dp = 4, G = 8                       p = 4, dp = 4, G = 8
      node 0: s0 s1 s2 s3 | s0 s1 s2 s3          node 0: s0 s0 s0 s0 | s1 s1 s1 s1
      node 1: s0 s1 s2 s3 | s0 s1 s2 s3          node 1: s2 s2 s2 s2 | s3 s3 s3 s3
      cuts in a node, all-reduce across          cut s1→s2 across, all-reduce in a node

A link is the intra-node one (NVLink) when both ends share a node, else the inter-node
one (a GPU's InfiniBand NIC). [Note: the data-parallel sync]: each stage all-reduces its
gradients over its ``dp`` replicas once per step, after its last backward and before its
optimizer step, as a ring: 2(dp−1)/dp of the bytes through each rank
(``Config.allreduce_s`` prices tied gradients the same way), at the group's link. It
overlaps with the other stages' remaining work (1F1B: the last stage finishes first, so
its all-reduce runs under the earlier stages' last backwards), not with its own backward
(DDP's bucketed overlap during the last micro-batch is not counted: conservative). A group
with members on two nodes runs at the inter-node bandwidth (a ring is as fast as its
slowest hop; hierarchical all-reduce is not modelled).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from autopipe.errors import PlanError
from autopipe.partition.problem import Problem, ring_allreduce_per_byte
from autopipe.plan_format import Device

PLACEMENTS = ("pipelines", "replicas")
"""Rank orders tried; earlier wins ties (pipeline neighbours in a node, as the issue asks)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GradSync:
    """What the planner adds to each stage for its data-parallel replicas
    ([Note: the data-parallel sync])."""

    replicas: int
    """Data-parallel degree ``dp`` (each stage's group size)."""
    bandwidth: float
    """Bytes/s of the links the stages' all-reduce crosses (the slowest group's)."""
    shard_optimizer: bool = False
    """Optimizer states (and fp32 master weights) sharded over the replicas (ZeRO-1, FSDP2
    with parameters kept whole in the step): 1/dp of them per GPU, the optimizer step on 1/dp
    of the parameters: the gradients reduce-scattered and the parameters all-gathered, the
    bytes of one all-reduce ([Note: the sharded sync's price])."""

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise PlanError(f"{self.replicas} data-parallel replicas", hint="use at least 1")
        if not self.bandwidth > 0:
            raise PlanError(f"all-reduce bandwidth {self.bandwidth} is not positive",
                            hint="give bytes/s, e.g. 50e9")

    @property
    def per_byte(self) -> float:
        """Seconds per gradient byte of a stage's all-reduce (gradients have the parameters'
        dtype: ``autopipe.profile.memory.param_memory``)."""
        return ring_allreduce_per_byte(self.replicas, self.bandwidth)

    @property
    def sync_per_byte(self) -> float:
        """Seconds per parameter byte of a stage's sync.

        [Note: the sharded sync's price]
        Sharded or not, the bytes of one all-reduce of the gradients: ZeRO-1 (DeepSpeed's, and
        autopipe's runtime: [Note: reduce-scatter and all-gather in rounds] in
        ``autopipe.runtime.shard_comm``) reduce-scatters the gradients and all-gathers the
        updated parameters, (dp − 1)/dp of the bytes each, which is what a ring all-reduce
        moves. Until 2026-12-07 the runtime all-reduced whole gradients and then broadcast
        each owner's share, and the plan priced that gather on top (1.5 all-reduces' worth
        for dp = 2).
        """
        return self.per_byte

    @property
    def shards(self) -> int:
        """How many ways each stage's optimizer states are split."""
        return self.replicas if self.shard_optimizer else 1

    def step_per_byte(self, optimizer_per_byte: float, devices: Sequence[Device]) -> float:
        """The optimizer step's per-parameter-byte rate with the all-reduce folded in.

        The timeline runs one task per stage after its last backward (``O`` in
        ``autopipe.partition.timeline``), linear in the stage's parameter bytes and divided by
        the device's speed: the sync (``sync_per_byte``) joins it there, at the device speed's multiple so
        that the division leaves it whole.

        Raises:
            PlanError: the devices differ in speed (the fold would not be exact).
        """
        speeds = {d.speed for d in devices}
        if len(speeds) > 1:
            raise PlanError(f"data-parallel planning needs identical devices; these run at speeds "
                            f"{sorted(speeds)}", hint="give one memory limit for every stage")
        return optimizer_per_byte / self.shards + self.sync_per_byte * speeds.pop()

    def shard(self, problem: Problem) -> Problem:
        """``problem`` with each parameter's optimizer states split over the shards, and the
        step's temporaries too (a replica steps only its pieces: [Note: the sharded optimizer
        step] in ``autopipe.runtime.zero``; charged whole, they kept a Mixtral-8x7B shape out
        of 8 stages × 4 replicas on 80 GB), and every gradient whole (the all-reduce writes
        all of an embedding's gradient on zero pages: [Note: an embedding's gradient on zero
        pages] in ``autopipe.runtime.grad_accum``)."""
        if self.shards == 1 and self.replicas == 1:
            return problem
        mem = {q: replace(m, optimizer=-(-m.optimizer // self.shards), step=-(-m.step // self.shards),
                          grads=m.params if self.replicas > 1 and 0 < m.grads < m.params else m.grads)
               for q, m in problem.param_mem.items()}
        return replace(problem, param_mem=mem)

    def to_json(self) -> dict[str, Any]:
        """What a plan records (``plan.options["grad_sync"]``)."""
        return {"replicas": self.replicas, "bandwidth": self.bandwidth,
                "seconds_per_byte": self.per_byte, "shard_optimizer": self.shard_optimizer}


def check_nodes(gpus: int, gpus_per_node: int) -> None:
    """Raise PlanError unless ``gpus`` GPUs fill whole nodes of ``gpus_per_node`` (or part of one)."""
    for name, value in (("gpus", gpus), ("gpus_per_node", gpus_per_node)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PlanError(f"{name} = {value!r}", hint=f"give a positive number of {name.replace('_', ' ')}")
    if gpus > gpus_per_node and gpus % gpus_per_node:
        raise PlanError(f"{gpus} GPUs do not fill nodes of {gpus_per_node}",
                        hint=f"use a multiple of {gpus_per_node} GPUs, or --gpus-per-node that divides {gpus}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Cluster:
    """The GPUs a data × pipeline plan runs on."""

    gpus: int
    """``N``, all of them identical."""
    gpus_per_node: int
    """``G``; ranks ``k·G … (k+1)·G − 1`` share node ``k``."""
    intra_bandwidth: float
    """Bytes/s between two GPUs of a node, one direction (NVLink)."""
    inter_bandwidth: float
    """Bytes/s between GPUs of two nodes, per GPU, one direction (its NIC)."""
    intra_allreduce_bandwidth: float = 0.0
    """What a ring all-reduce inside a node reaches per link, where measured with the
    runtime's backend (the profile's ``runtime.allreduce_bandwidth``); 0: ``intra_bandwidth``."""

    def __post_init__(self) -> None:
        check_nodes(self.gpus, self.gpus_per_node)
        for name, bw in (("intra-node", self.intra_bandwidth), ("inter-node", self.inter_bandwidth)):
            if not bw > 0:
                raise PlanError(f"{name} bandwidth {bw} is not positive", hint="give bytes/s, e.g. 50e9")

    @property
    def nodes(self) -> int:
        """Number of nodes."""
        return max(1, -(-self.gpus // self.gpus_per_node))


@dataclass(frozen=True, slots=True, kw_only=True)
class Placement:
    """Which global rank runs each (stage, replica), and the links that follow."""

    name: str
    """One of ``PLACEMENTS``."""
    ranks: tuple[tuple[int, ...], ...]
    """``ranks[stage][replica]``: the global rank."""
    cut_bandwidth: float
    """The link of the cuts: inter-node if any cut of any replica crosses nodes, else
    intra-node (the planner prices every cut at one bandwidth: conservative)."""
    cuts_across_nodes: int
    """Boundaries ``s → s+1`` that cross nodes in some replica."""
    group_bandwidth: float
    """The link of the all-reduces: inter-node if any stage's replicas span nodes, else
    intra-node (every stage's all-reduce is priced at it)."""
    groups_across_nodes: int
    """Stages whose replicas are not all on one node."""

    def describe(self) -> str:
        """One line: the links the cuts and the all-reduces use."""
        p = len(self.ranks)
        return (f"{self.name}: {self.cuts_across_nodes} of {p - 1} cuts and "
                f"{self.groups_across_nodes} of {p} replica groups cross nodes")


def place(cluster: Cluster, stages: int, name: str) -> Placement:
    """Put ``stages`` × ``cluster.gpus / stages`` replicas on the cluster's ranks.

    Raises:
        PlanError: an unknown placement, or ``stages`` does not divide the GPUs.
    """
    if name not in PLACEMENTS:
        raise PlanError(f"unknown placement {name!r}", hint=f"choose one of {', '.join(PLACEMENTS)}")
    if cluster.gpus % stages:
        raise PlanError(f"{stages} stages do not divide {cluster.gpus} GPUs",
                        hint="use a divisor of the GPU count")
    p, dp = stages, cluster.gpus // stages
    if name == "pipelines":
        ranks = tuple(tuple(r * p + s for r in range(dp)) for s in range(p))
    else:
        ranks = tuple(tuple(s * dp + r for r in range(dp)) for s in range(p))
    node = cluster.gpus_per_node
    cuts = [any(a // node != b // node for a, b in zip(ranks[s], ranks[s + 1])) for s in range(p - 1)]
    groups = [len({r // node for r in g}) > 1 for g in ranks]

    inside = cluster.intra_allreduce_bandwidth or cluster.intra_bandwidth
    return Placement(name=name, ranks=ranks,
                     cut_bandwidth=cluster.inter_bandwidth if any(cuts) else cluster.intra_bandwidth,
                     cuts_across_nodes=sum(cuts),
                     group_bandwidth=cluster.inter_bandwidth if any(groups) else inside,
                     groups_across_nodes=sum(groups))
