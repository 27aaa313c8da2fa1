"""The options of a degree search (``autopipe.partition.degrees``), checked before anything is
profiled, and what they leave to try for each pipeline degree."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from autopipe._units import parse_size
from autopipe.errors import AutopipeError, PlanError
from autopipe.partition.layers import check_granularity
from autopipe.partition.mip_time import MipTime
from autopipe.partition.planner import AUTO_SCHEDULES, METHODS, ProfileSource, parse_bandwidth
from autopipe.partition.problem import MULTI_CHUNK, SCHEDULES
from autopipe.partition.replicas import PLACEMENTS, check_nodes
from autopipe.profile.profile import Profile

PLAN_ARGS = frozenset({"max_blocks", "time_limit", "mip_gap", "solver", "deterministic", "dtype",
                       "granularity", "cut_at", "recompute", "remake"})
"""``plan_profile``'s options that a degree search passes on unchanged."""
DEFAULT_INTER_NODE_BANDWIDTH = 50e9
"""Bytes/s per GPU between nodes when not given: one 400 Gb/s InfiniBand NIC per GPU (DGX H100)."""

Row = dict[str, Any]
"""One candidate of ``plan.options["degrees"]``: ``stages``, ``replicas`` and either
``placement``, ``microbatches``, ``microbatch_size``, ``schedule``, ``method``,
``iteration_s``, ``samples_per_s``, ``memory``, ``memory_limit``, or ``why`` it has none."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Search:
    """The options every candidate of a degree search shares (``search_options``)."""

    gpus: int
    gpus_per_node: int
    intra: float | None
    inter: float
    batch_size: int
    stages: int | None
    microbatches: int | None
    sizes: tuple[int, ...] | None
    schedules: tuple[str, ...]
    placements: tuple[str, ...]
    shard_optimizer: bool
    memory: int | None
    optimizer: str
    screen: str
    method: str
    finalists: int
    plan_args: dict[str, Any]
    mip_time: MipTime
    """The search's MIP seconds (``plan_args``' ``time_limit``, 60 s by default): the
    finalists share them, as every candidate does under a screen by the ILP."""


def search_options(gpus: int, batch_size: int, gpus_per_node: int | None, intra: float | str | None,
             inter: float | str | None, stages: int | None, microbatches: int | str | None,
             sizes: Sequence[int] | None, schedule: str | Sequence[str], placements: Sequence[str],
             shard_optimizer: bool, memory_limit: str | int | None, optimizer: str, method: str,
             screen: str | None, finalists: int, plan_args: dict[str, Any]) -> Search:
    """Every option, checked before anything is profiled."""
    node = gpus if gpus_per_node is None else gpus_per_node
    check_nodes(gpus, node)
    counts = (("batch_size", batch_size), ("stages", stages), ("finalists", finalists),
              ("microbatches", None if microbatches in (None, "auto") else microbatches))
    for name, value in counts:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise PlanError(f"{name} = {value!r}", hint=f"give a positive number for {name}")
    if stages is not None and gpus % stages:
        raise PlanError(f"{stages} stages do not divide {gpus} GPUs",
                        hint=f"use one of {', '.join(map(str, divisors(gpus)))}")
    names = tuple(AUTO_SCHEDULES) if schedule == "auto" else (
        (schedule,) if isinstance(schedule, str) else tuple(schedule))
    for name in names:
        if name not in SCHEDULES:
            raise PlanError(f"unknown schedule {name!r}",
                            hint=f"the planner models {', '.join(SCHEDULES)}; or auto to try each")
        if name in MULTI_CHUNK:  # a degree search places one stage per GPU
            raise PlanError(f"schedule {name} runs several chunks per rank, which the search over "
                            "pipeline x data-parallel degrees does not plan",
                            hint="plan it with --stages N instead of --gpus, or use 1f1b, zb-h1 or gpipe")
    for name in (method, screen or method):
        if name not in METHODS:
            raise PlanError(f"unknown method {name!r}", hint=f"choose one of {', '.join(METHODS)}")
    for name in placements:
        if name not in PLACEMENTS:
            raise PlanError(f"unknown placement {name!r}", hint=f"choose from {', '.join(PLACEMENTS)}")
    if sizes is not None and (not sizes or any(
            isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in sizes)):
        raise PlanError(f"microbatch_sizes = {list(sizes)!r}", hint="give positive sample counts, e.g. 1,2,4")
    odd = sorted(set(plan_args) - PLAN_ARGS)
    if odd:
        raise PlanError(f"plan_degrees does not take {odd[0]!r}",
                        hint=f"besides its own options it passes on {', '.join(sorted(PLAN_ARGS))}")
    check_granularity(plan_args.get("granularity"), plan_args.get("cut_at"))
    try:
        memory = parse_size(memory_limit) if memory_limit is not None else None
    except AutopipeError as e:
        raise PlanError(f"memory limit: {e.message}", hint=e.hint) from None
    return Search(
        gpus=gpus, gpus_per_node=node,
        intra=parse_bandwidth(intra, "intra-node bandwidth") if intra is not None else None,
        inter=parse_bandwidth(inter, "inter-node bandwidth") if inter is not None
        else DEFAULT_INTER_NODE_BANDWIDTH,
        batch_size=batch_size, stages=stages,
        microbatches=microbatches if isinstance(microbatches, int) else None,
        sizes=tuple(sorted(set(sizes))) if sizes is not None else None, schedules=names,
        placements=tuple(placements) or PLACEMENTS, shard_optimizer=shard_optimizer, memory=memory,
        optimizer=optimizer, screen=screen or method, method=method, finalists=finalists,
        plan_args=dict(plan_args), mip_time=MipTime(float(plan_args.get("time_limit", 60.0))))


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def fixed_size(profile: ProfileSource) -> int | None:
    """A single Profile's micro-batch size (dim 0 of its first input); None for ``b -> Profile``."""
    if not isinstance(profile, Profile):
        return None
    shape = profile.microbatch_shape[0] if profile.microbatch_shape else []
    if not shape:
        raise PlanError("the profile's first input has no batch dimension, so its micro-batch "
                        "size is unknown", hint="plan from the model (it is profiled per size)")
    return int(shape[0])


def sizes_for(search: Search, p: int, fixed: int | None) -> tuple[int, ...] | str:
    """The micro-batch sizes to try with ``p`` stages, or why there are none."""
    dp = search.gpus // p
    if search.batch_size % dp:
        return f"the batch of {search.batch_size} does not split over {dp} replicas"
    share = search.batch_size // dp
    if search.microbatches is not None:
        if share % search.microbatches:
            return f"{search.microbatches} micro-batches do not divide a replica's {share} samples"
        sizes: list[int] = [share // search.microbatches]
    else:
        sizes = [b for b in divisors(share) if search.sizes is None or b in search.sizes]
    if fixed is not None:
        if search.sizes is not None and fixed not in search.sizes:
            # the sizes asked for leave the profile's out (a wrong reason until 2026-12-07)
            return (f"the profile's micro-batches hold {fixed} samples, which is none of the "
                    f"micro-batch sizes {list(search.sizes)} asked for")
        sizes = [b for b in sizes if b == fixed]
        if not sizes:
            return (f"the profile's micro-batches of {fixed} do not divide a replica's {share} samples"
                    + (f" into {search.microbatches}" if search.microbatches else ""))
    if not sizes:
        return f"none of the micro-batch sizes {list(search.sizes or ())} divides a replica's {share} samples"
    return tuple(sizes)
