"""``plan_degrees``: how to use N GPUs — pipeline stages × data-parallel replicas, micro-batches, schedule.

    for p in the divisors of N (dp = N / p; each replica takes B / dp of the batch B):
        skipped: dp does not divide B; p above the model's separable blocks; the
                 parameters, gradients and optimizer states alone overflow p GPUs
        for each placement with distinct links (``autopipe.partition.replicas``):
            for each micro-batch size b dividing B / dp (m = B / (dp·b)), each schedule:
                plan_profile(p stages, m, schedule, the cuts at the placement's link,
                             each stage's gradient all-reduce over dp before its optimizer step)

Every candidate is planned with ``screen`` (the chain DP: fast), the ``finalists`` fastest
again with ``method`` (the ILP, warm-started from the best of the DP's and the baselines'
cuts, so never slower). Every candidate does B samples per step: samples/s = B / step, and
the shortest predicted step wins; ties go to fewer stages, then the earlier placement,
fewer micro-batches, the earlier schedule.

Each micro-batch size is profiled once and shared by every p. Memory: every replica holds
its stage's whole parameters, gradients and optimizer states (DDP), or with
``shard_optimizer`` 1/dp of the optimizer states (ZeRO-1; FSDP's sharding of parameters
and gradients is not modelled). Schedule dominance saves solves: zb-h1 and GPipe hold at
least as many micro-batches as 1F1B at every stage, and no placement changes memory, so
what does not fit once is not tried again; with one stage every schedule runs the same
actions, so only 1F1B is tried.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from autopipe._units import format_size
from autopipe.errors import AutopipeError, InfeasiblePlanError, PlanError
from autopipe.partition.coarsen import merge_forced
from autopipe.partition.costs import usable
from autopipe.partition.degree_options import (
    DEFAULT_INTER_NODE_BANDWIDTH,
    Row,
    Search,
    divisors,
    fixed_size,
    search_options,
    sizes_for,
)
from autopipe.partition.finalists import DEFAULT_FINALISTS, finalists, mark_rows, refined_best
from autopipe.partition.planner import ProfileSource, link_bandwidth_for, plan_profile
from autopipe.partition.problem import Config, Problem, from_profile
from autopipe.partition.replicas import PLACEMENTS, Cluster, GradSync, place
from autopipe.plan_format import DataParallel, Device, Plan
from autopipe.profile.profile import Profile
from autopipe.schedule.actions import check_runnable

__all__ = ["DEFAULT_INTER_NODE_BANDWIDTH", "Row", "plan_degrees"]


def plan_degrees(
    profile: ProfileSource,
    *,
    gpus: int,
    batch_size: int,
    gpus_per_node: int | None = None,
    intra_node_bandwidth: float | str | None = None,
    inter_node_bandwidth: float | str | None = None,
    stages: int | None = None,
    microbatches: int | str | None = None,
    microbatch_sizes: Sequence[int] | None = None,
    schedule: str | Sequence[str] = "auto",
    placements: Sequence[str] = PLACEMENTS,
    shard_optimizer: bool = False,
    memory_limit: str | int | None = None,
    optimizer: str = "adam",
    method: str = "ilp",
    screen: str | None = "dp",
    finalists: int = DEFAULT_FINALISTS,
    progress: Callable[[Row], None] | None = None,
    refine: Refine | None = None,
    **plan_args: Any,
) -> Plan:
    """The fastest way to train on ``gpus`` GPUs: stages × replicas, micro-batches, schedule.

    Args:
        profile: ``b -> Profile`` for a micro-batch of ``b`` samples (each size is asked
            once), or one Profile, whose micro-batch size (dim 0 of its first input) is fixed.
        gpus: ``N``; every pipeline degree ``p`` dividing it is tried (``dp = N / p``).
        batch_size: ``B``, samples per optimizer step over all replicas.
        gpus_per_node: ``G`` (default: all on one node).
        intra_node_bandwidth: bytes/s inside a node; default the profile's link (the device
            spec's: NVLink), as ``plan_profile`` takes it, and for all-reduces the profile's
            measured all-reduce bandwidth where it has one.
        inter_node_bandwidth: bytes/s per GPU between nodes; default 50 GB/s.
        stages: try only this ``p``.
        microbatches: micro-batches per replica; None or ``"auto"``: search the sizes.
        microbatch_sizes: the micro-batch sizes to try (default: every divisor of ``B / dp``).
        schedule: ``auto`` (``1f1b``, ``zb-h1``, ``gpipe``), one of them, or a list.
        placements: rank orders to try (``autopipe.partition.replicas.PLACEMENTS``).
        shard_optimizer: split optimizer states over the replicas (ZeRO-1) instead of DDP.
        memory_limit: per GPU; default the memory of the profile's device spec (else unlimited).
        optimizer: ``adam``, ``sgd`` … (states in memory, the step's time).
        method: the partitioner of the finalists (``ilp``).
        screen: the partitioner of every candidate first (``dp``); None: ``method`` for all.
        finalists: how many of the fastest candidates ``method`` plans again.
        progress: called with each row as it is decided.
        refine: ``refine(plan, b, replan)`` gives the plan to keep for candidate ``plan``, of
            micro-batches of ``b`` samples; ``replan(profile)`` plans that candidate alone on
            ``profile`` (``autopipe.refine.refine_candidate``: its stages re-timed as whole
            modules). The finalists are refined and the fastest refined wins ([Note: finalists
            re-timed] in ``autopipe.partition.finalists``); each row records ``refined_s`` where it is another plan.
            The search leaves them a share of its MIP time ([Note: time kept for the re-solves]
            in ``autopipe.partition.mip_time``): None where nothing will be refined.
        **plan_args: ``plan_profile``'s other options (``max_blocks``, ``time_limit``,
            ``mip_gap``, ``solver``, ``deterministic``, ``dtype``, ``granularity``, ``cut_at``).

    Returns:
        The chosen plan, with ``data_parallel`` (its replicas and their ranks) and
        ``options["degrees"]``: every candidate tried, with its predicted step, samples/s and
        peak memory, or why it has none.

    Raises:
        PlanError: bad options (``G`` that does not tile ``N``, ``stages`` not dividing it),
            or a batch that splits over none of the replica counts.
        InfeasiblePlanError: no candidate fits (the message says why for each ``p``).
    """
    search = search_options(gpus, batch_size, gpus_per_node, intra_node_bandwidth, inter_node_bandwidth,
                      stages, microbatches, microbatch_sizes, schedule, placements, shard_optimizer,
                      memory_limit, optimizer, method, screen, finalists, plan_args)
    if refine is not None:  # the finalists' re-solves get their share ([Note: time kept for the re-solves])
        search.mip_time.hold()
    fixed = fixed_size(profile)
    source = _memo(profile)
    layout = [(p, gpus // p, sizes_for(search, p, fixed)) for p in divisors(gpus)
              if search.stages in (None, p)]
    needed = [b for _, _, sizes in layout if isinstance(sizes, tuple) for b in sizes]
    if not needed:
        raise PlanError(f"the batch of {batch_size} splits into micro-batches for none of the "
                        f"{len(layout)} pipeline degrees tried: "
                        + "; ".join(f"{p} x {dp}: {why}" for p, dp, why in layout),
                        hint=f"a saved profile fixes the micro-batch size at {fixed}: drop "
                             "--microbatch-sizes (microbatch_sizes), or profile the model at a size "
                             "you ask for" if fixed is not None and search.sizes is not None
                             and fixed not in search.sizes else
                             "use a batch size divisible by the GPU count"
                             + (", and micro-batch sizes (--microbatch-sizes) that divide its shares"
                                if search.sizes is not None else ""))
    first = source(min(needed))
    cluster = Cluster(gpus=gpus, gpus_per_node=search.gpus_per_node, inter_bandwidth=search.inter,
                      intra_bandwidth=search.intra or link_bandwidth_for(first, None),
                      intra_allreduce_bandwidth=0.0 if search.intra else float(
                          first.runtime.get("allreduce_bandwidth", 0.0)))
    memory = search.memory if search.memory is not None else _spec_memory(first)
    base = from_profile(first, _any_config(), optimizer=optimizer, dtype=plan_args.get("dtype"))
    separable = merge_forced(base).num_real
    rows: list[Row] = []
    plans: dict[int, Plan] = {}
    say = progress or (lambda row: None)
    degrees: list[tuple[int, int, str | list[Candidate]]] = []
    for p, dp, sizes in layout:
        if isinstance(sizes, str):  # why none split the batch
            degrees.append((p, dp, sizes))
            continue
        why = _skip(base, p, dp, separable, memory, search)
        degrees.append((p, dp, why or _candidates(search, cluster, p, sizes)))
    pending = sum(len(c) for _, _, c in degrees if not isinstance(c, str))
    for p, dp, candidates in degrees:
        if isinstance(candidates, str):
            rows.append({"stages": p, "replicas": dp, "why": candidates})
            say(rows[-1])
            continue
        unfit: dict[tuple[int, str], str] = {}  # what does not fit p stages
        for row, cut_bw, group_bw in candidates:
            # a screen by the ILP: each candidate an equal part of the MIP time left
            row.update(_one(search, memory, source, cut_bw, group_bw, row, unfit, plans, len(rows),
                            parts=pending))
            pending -= 1
            rows.append(row)
            say(row)
    best = _finish(search, cluster, memory, source, rows, plans, say)
    plan = plans[best]
    if refine is not None:
        best, plan = _refined_best(search, cluster, memory, rows, plans, refine)
    return _result(search, cluster, memory, plan, rows[best], rows)


def _memo(profile: ProfileSource) -> Callable[[int], Profile]:
    if isinstance(profile, Profile):
        return lambda size: profile
    return functools.cache(profile)


def _any_config() -> Config:
    """A pipeline to build the graph's Problem with, for what does not depend on it."""
    return Config(num_stages=1, microbatches=1, schedule="1f1b",
                  devices=(Device(name="any", memory=0),), link_bandwidth=1.0)


def _spec_memory(profile: Profile) -> int | None:
    spec = profile.meta.get("device_spec")
    memory = spec.get("memory") if isinstance(spec, dict) else None
    return int(memory) if isinstance(memory, (int, float)) and memory > 0 else None


def _skip(base: Problem, p: int, dp: int, separable: int, memory: int | None, search: Search) -> str:
    """Why no partition into ``p`` stages can exist, without solving; "" if one may."""
    if p > separable:
        return f"the model has only {separable} blocks that can be separated"
    if memory is None:
        return ""
    shards = dp if search.shard_optimizer else 1
    states = sum(m.params + m.grads + -(-m.optimizer // shards) for m in base.param_mem.values())
    if states / p > usable(memory):
        where = "its one GPU, over its" if p == 1 else f"each of {p} GPUs, over their"
        return (f"parameters, gradients and optimizer states take {format_size(states)}: at least "
                f"{format_size(states / p)} on {where} {format_size(memory)}")
    return ""


Refine = Callable[[Plan, int, Callable[[Profile], Plan]], Plan]
"""``plan_degrees``'s ``refine``: the chosen plan, its micro-batch size and how to plan it again."""

Candidate = tuple[Row, float, float]
"""A candidate's row (its degree, placement, micro-batches, schedule) and its links' bandwidths:
the cuts' and the gradient all-reduce's."""


def _candidates(search: Search, cluster: Cluster, p: int, sizes: tuple[int, ...]) -> list[Candidate]:
    """Every placement × micro-batch size × schedule with ``p`` stages, to plan in order."""
    share = search.batch_size // (search.gpus // p)
    links: set[tuple[float, float]] = set()
    schedules = search.schedules
    if p == 1:  # one stage runs F, B per micro-batch under every schedule: 1F1B holds the fewest
        schedules = ("1f1b",) if "1f1b" in schedules else schedules[:1]
    out: list[Candidate] = []
    for name in search.placements:
        placement = place(cluster, p, name)
        link = (placement.cut_bandwidth, placement.group_bandwidth)
        if link in links:
            continue  # another placement already priced these links
        links.add(link)
        out += [({"stages": p, "replicas": search.gpus // p, "placement": name, "microbatches": share // b,
                  "microbatch_size": b, "schedule": schedule}, *link)
                for b in sizes for schedule in schedules]
    return out


def _one(search: Search, memory: int | None, source: Callable[[int], Profile], cut_bw: float,
         group_bw: float, row: Row, unfit: dict[tuple[int, str], str], plans: dict[int, Plan],
         index: int, parts: int) -> Row:
    """Plan one candidate with ``search.screen``: what its row records. A screen by the ILP
    gets 1 / ``parts`` of the MIP time left (``parts``: the candidates left, this one
    included; one skipped leaves its part to those after it)."""
    p, m, b, schedule = row["stages"], row["microbatches"], row["microbatch_size"], row["schedule"]
    try:
        check_runnable(schedule, p, m)
    except PlanError as e:
        return {"why": e.message}
    if (b, schedule) in unfit:
        return {"why": unfit[(b, schedule)]}
    if (b, "1f1b") in unfit:  # 1F1B holds the fewest micro-batches in flight of all
        return {"why": f"does not fit: 1f1b with micro-batches of {b} does not, and {schedule} "
                       f"holds at least as many in flight"}
    try:
        plan = _plan(search, memory, source, p, m, b, schedule, cut_bw, group_bw, search.screen, parts)
    except InfeasiblePlanError as e:
        unfit[(b, schedule)] = e.message
        return {"why": e.message}
    except PlanError as e:
        return {"why": e.message}
    plans[index] = plan
    return _figures(search, memory, plan)


def _plan(search: Search, memory: int | None, source: Callable[[int], Profile], p: int, m: int,
          b: int, schedule: str, cut_bw: float, group_bw: float, method: str, parts: int = 1) -> Plan:
    """Plan one candidate with ``method``; the ILP with 1 / ``parts`` of the search's MIP
    time left (``search.mip_time``)."""
    dp = search.gpus // p

    def plan(seconds: float) -> Plan:
        return plan_profile(source, num_stages=p, microbatches=m, batch_size=m * b, schedule=schedule,
                            memory_limit=memory, optimizer=search.optimizer, method=method,
                            link_bandwidth=cut_bw,
                            grad_sync=GradSync(replicas=dp, bandwidth=group_bw,
                                               shard_optimizer=search.shard_optimizer),
                            **{**search.plan_args, "time_limit": seconds})
    if method != "ilp":
        return plan(search.mip_time.limit)
    return search.mip_time.give(parts, plan)


def _figures(search: Search, memory: int | None, plan: Plan) -> Row:
    step = plan.predicted.iteration_s
    peak = max(plan.predicted.peak_memory or [s.memory.total for s in plan.stages])
    return {"method": plan.solver.method, "iteration_s": step,
            "samples_per_s": search.batch_size / step if step > 0 else None,
            "bubble_fraction": plan.predicted.bubble_fraction, "memory": peak, "memory_limit": memory,
            "gap": plan.solver.gap}


def _key(search: Search, row: Row) -> tuple[float, int, int, int, int]:
    return (row["iteration_s"], row["stages"], search.placements.index(row["placement"]),
            row["microbatches"], search.schedules.index(row["schedule"]))


def _finish(search: Search, cluster: Cluster, memory: int | None, source: Callable[[int], Profile],
            rows: list[Row], plans: dict[int, Plan], say: Callable[[Row], None]) -> int:
    """Re-plan the fastest candidates with ``search.method``; the index of the best row.

    Raises:
        InfeasiblePlanError: no candidate has a plan.
    """
    ranked = sorted(plans, key=lambda i: _key(search, rows[i]))
    if not ranked:
        raise _nothing_fits(search, rows)
    if search.method != search.screen:
        finals = ranked[:search.finalists]
        for k, i in enumerate(finals):
            row = rows[i]
            placement = place(cluster, row["stages"], row["placement"])
            try:  # the finalists share the search's MIP time
                plan = _plan(search, memory, source, row["stages"], row["microbatches"],
                             row["microbatch_size"], row["schedule"], placement.cut_bandwidth,
                             placement.group_bandwidth, search.method, parts=len(finals) - k)
            except AutopipeError as e:  # e.g. no MIP solution in the time limit: keep the screen's
                row["note"] = f"{search.method}: {e.message}"
                continue
            row[f"{search.screen}_s"] = row["iteration_s"]
            if plan.predicted.iteration_s <= row["iteration_s"]:
                plans[i] = plan
                row.update(_figures(search, memory, plan))
            say(row)
    return min(plans, key=lambda i: _key(search, rows[i]))


def _refined_best(search: Search, cluster: Cluster, memory: int | None, rows: list[Row],
                  plans: dict[int, Plan], refine: Refine) -> tuple[int, Plan]:
    """The finalists re-timed as whole stages by ``refine``, and the fastest of them: its
    index and plan ([Note: finalists re-timed] in ``autopipe.partition.finalists``). Each row
    re-timed records ``refined_s``; the chosen one, where it was chosen among several,
    ``retimed_s`` too."""
    ranked = sorted(plans, key=lambda i: _key(search, rows[i]))
    finals = [ranked[k] for k in finalists([rows[i]["iteration_s"] for i in ranked], search.finalists)]

    def refined(k: int, plan: Plan) -> Plan:
        row = rows[finals[k]]
        return refine(plan, row["microbatch_size"], _replan(search, cluster, memory, row, plan))

    starts = [plans[i] for i in finals]
    k, done, again = refined_best(starts, refined, search.mip_time)
    return finals[k], mark_rows([rows[i] for i in finals], starts, done, k, again)


def _replan(search: Search, cluster: Cluster, memory: int | None, row: Row,
            chosen: Plan) -> Callable[[Profile], Plan]:
    """Plans ``row``'s candidate alone on a given profile, by the method that planned
    ``chosen`` (the screen's, where ``search.method`` failed on it), or by the ``method``
    given (a baseline's: [Note: a faster baseline timed] in ``autopipe.refine_baselines``),
    in the MIP time left."""
    placement = place(cluster, row["stages"], row["placement"])
    method = chosen.solver.method

    def replan(profile: Profile, method: str = method) -> Plan:
        return _plan(search, memory, lambda size: profile, row["stages"], row["microbatches"],
                     row["microbatch_size"], row["schedule"], placement.cut_bandwidth,
                     placement.group_bandwidth, method)
    return replan


def _nothing_fits(search: Search, rows: list[Row]) -> InfeasiblePlanError:
    """One error naming, per pipeline degree, why it has no plan."""
    why: dict[tuple[int, int], list[str]] = {}
    for row in rows:
        why.setdefault((row["stages"], row["replicas"]), []).append(row["why"])
    parts = []
    for (p, dp), reasons in why.items():
        tried = f" ({len(reasons)} candidates; first: " if len(reasons) > 1 else " ("
        parts.append(f"{p} stages x {dp} replicas{tried}{reasons[0]})")
    hint = "use more GPUs, an optimizer with fewer states (sgd)"
    if not search.shard_optimizer:
        hint += ", shard the optimizer states over the replicas (--shard-optimizer)"
    return InfeasiblePlanError(f"no way to train on {search.gpus} GPUs fits: " + "; ".join(parts),
                               hint=hint + ", or smaller micro-batches")


def _result(search: Search, cluster: Cluster, memory: int | None, plan: Plan, row: Row,
            rows: list[Row]) -> Plan:
    """The chosen plan with its replicas and the whole search."""
    placement = place(cluster, plan.num_stages, row["placement"])
    dp = search.gpus // plan.num_stages
    per_byte = GradSync(replicas=dp, bandwidth=placement.group_bandwidth,
                        shard_optimizer=search.shard_optimizer).sync_per_byte
    synced = search.optimizer != "none"
    data_parallel = DataParallel(
        degree=dp, ranks=placement.ranks, batch_size=search.batch_size, placement=placement.name,
        gpus_per_node=cluster.gpus_per_node, allreduce_bandwidth=placement.group_bandwidth,
        allreduce_s=tuple(per_byte * s.memory.params if synced else 0.0 for s in plan.stages),
        shard_optimizer=search.shard_optimizer)
    info = {"gpus": cluster.gpus, "gpus_per_node": cluster.gpus_per_node,
            "intra_node_bandwidth": cluster.intra_bandwidth,
            "intra_node_allreduce_bandwidth": cluster.intra_allreduce_bandwidth or cluster.intra_bandwidth,
            "intra_node_bandwidth_given": search.intra,
            "inter_node_bandwidth": cluster.inter_bandwidth, "memory_limit": memory,
            "batch_size": search.batch_size, "screen": search.screen, "method": search.method,
            "finalists": search.finalists, "placement": placement.describe()}
    return replace(plan, data_parallel=data_parallel,
                   options={**plan.options, "cluster": info, "degrees": rows})
