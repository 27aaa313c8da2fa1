"""``plan_profile``: from a Profile and pipeline options to a Plan, by any partitioning method.

    Profile ─► Problem (one block per node) ─► merge_forced ─► coarsen (above max_blocks)
           ─► DP + uniform + params (each scored by costs.evaluate)
           ─► ILP warm-started from the best of them that fits  (method "ilp")
           ─► Plan: stages, predictions, solver block, what the baselines would give
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from autopipe._phases import phase
from autopipe.errors import AutopipeError, InfeasiblePlanError, PlanError
from autopipe.partition import baselines
from autopipe.partition.assemble import baseline, stages
from autopipe.partition.bounds import simple_bound, step_bound  # noqa: F401 (simple_bound: re-exported)
from autopipe.partition.chain import Chain
from autopipe.partition.coarsen import coarsen, merge_forced
from autopipe.partition.costs import Evaluation, evaluate, optimizer_steps, violations
from autopipe.partition.devices import DevicesArg, resolve_devices
from autopipe.partition.dp import min_bottleneck
from autopipe.partition.ilp import solve_ilp
from autopipe.partition.infeasible import Setting, chain_fits, explain
from autopipe.partition.layers import Layers, check_granularity, node_layers, record, restrict
from autopipe.partition.mip_time import not_solving
from autopipe.partition.problem import (
    MULTI_CHUNK,
    RECOMPUTE,
    REMAKE,
    SCHEDULES,
    Config,
    Problem,
    check_virtual_stages,
    element_size,
    from_profile,
)
from autopipe.partition.recompute import fit
from autopipe.partition.replicas import GradSync
from autopipe.partition.search import Beaten, Candidate, search
from autopipe.plan_format import Plan, Predicted, SolverInfo
from autopipe.profile.profile import Profile
from autopipe.schedule.actions import V_SHAPED, check_runnable, placed_rank
from autopipe.schedule.simulate import StageCost as SimCost
from autopipe.schedule.simulate import simulate

METHODS = ("ilp", "dp", "uniform", "params")
DEFAULT_LINK_BANDWIDTH = 25e9
"""Bytes/s between stages when neither the caller nor the profile's device spec says
(a PCIe 4.0 x16 link, one direction)."""
DEFAULT_MAX_BLOCKS = 400
AUTO_SCHEDULES = ("1f1b", "zb-h1", "gpipe")
"""``schedule="auto"`` tries these (those the planner models), preferring earlier ones on ties."""
AUTO_CHUNKED = (("interleaved-1f1b", 2), ("zbv", 2), ("dualpipev", 2))
"""``schedule="auto"`` (in ``plan_profile``) also tries these schedules with these many
chunks per rank, after ``AUTO_SCHEDULES``, where the model has blocks enough for p × 2
chunks ([Note: chunks] in ``autopipe.partition.chunks``) and torch runs them (dualpipev:
at least 2p micro-batches)."""
DEFAULT_VIRTUAL_STAGES = 2
"""Chunks per rank of ``interleaved-1f1b`` (and ``zbv`` and ``dualpipev``, which need 2) when none are given."""

ProfileSource = Profile | Callable[[int], Profile]
"""A Profile of one micro-batch, or ``b -> Profile`` for a micro-batch of ``b`` samples."""


def link_bandwidth_for(profile: Profile, link_bandwidth: float | str | None) -> float:
    """The link bandwidth to plan with: given, else the profile's device spec's, else the default."""
    if link_bandwidth is not None:
        return parse_bandwidth(link_bandwidth)
    spec = profile.meta.get("device_spec")
    if isinstance(spec, dict) and isinstance(spec.get("link_bandwidth"), (int, float)):
        return float(spec["link_bandwidth"])
    if isinstance(profile.meta.get("link_bandwidth"), (int, float)):
        return float(profile.meta["link_bandwidth"])
    if profile.runtime.get("link_bandwidth", 0.0) > 0:  # measured with the runtime's backend
        return float(profile.runtime["link_bandwidth"])
    return DEFAULT_LINK_BANDWIDTH


def parse_bandwidth(value: float | str, what: str = "link bandwidth") -> float:
    """Bytes/s from ``25e9``, ``"25GB"`` or ``inf`` (free sends; a plan records None).

    Raises:
        PlanError: not a positive number of bytes/s (the hint offered ``inf``, which the CLI
            refused until 2026-12-07).
    """
    from autopipe._units import parse_size

    try:
        if isinstance(value, str) and value.strip().lower() in ("inf", "infinity"):
            return math.inf
        bw = float(parse_size(value)) if isinstance(value, str) else float(value)
    except Exception as e:
        raise PlanError(f"{what} {value!r} is not a number of bytes/s",
                        hint="write e.g. 25e9 or 25GB (per second)") from e
    if not bw > 0:
        raise PlanError(f"{what} {value!r} is not positive",
                        hint="write e.g. 25e9 or 25GB (per second); inf makes sends free")
    return bw


def check_options(num_stages: Any, microbatches: Any, schedule: str, method: str,
                  batch_size: Any = None, granularity: str | None = None, recompute: str = "auto",
                  virtual_stages: Any = None, remake: str = "auto", cut_at: str | None = None,
                  time_limit: Any = None, mip_gap: Any = None, one_profile: bool = False) -> None:
    """Raise PlanError for options no plan can have (before anything is traced or profiled).

    ``time_limit`` and ``mip_gap`` are checked where given: a user's time limit must be
    positive and finite (``plan_profile`` also takes 0, what is left once a limit is spent).
    ``one_profile``: the plan is made from one given profile, where ``auto`` micro-batches
    (a profile per size) cannot be offered.
    """
    check_mip_options(time_limit, mip_gap, spent=False)
    if remake not in REMAKE:
        raise PlanError(f"unknown remake mode {remake!r}", hint=f"choose one of {', '.join(REMAKE)}")
    check_granularity(granularity, cut_at)
    if recompute not in RECOMPUTE:
        raise PlanError(f"unknown recompute mode {recompute!r}",
                        hint="use auto (recompute where memory binds), none or full")
    if schedule != "auto" and schedule not in SCHEDULES:
        raise PlanError(f"unknown schedule {schedule!r}",
                        hint=f"the planner models {', '.join(SCHEDULES)}; or auto to try each")
    if method not in METHODS:
        raise PlanError(f"unknown method {method!r}", hint=f"choose one of {', '.join(METHODS)}")
    if isinstance(num_stages, bool) or not isinstance(num_stages, int) or num_stages < 1:
        raise PlanError(f"num_stages = {num_stages!r}", hint="use a positive number of stages")
    if microbatches is not None and microbatches != "auto" and (
            isinstance(microbatches, bool) or not isinstance(microbatches, int) or microbatches < 1):
        raise PlanError(f"microbatches = {microbatches!r}",
                        hint="use a positive number, or 'auto' to let the planner choose")
    if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise PlanError(f"batch_size = {batch_size!r}", hint="give the samples per step, e.g. 32")
    if microbatches == "auto" and batch_size is None:
        raise PlanError("microbatches='auto' needs the batch size (samples per optimizer step): "
                        "the planner tries each micro-batch count that divides it",
                        hint="pass --batch-size B (autopipe.plan(..., batch_size=B))")
    if isinstance(microbatches, int) and batch_size is not None and batch_size % microbatches:
        raise PlanError(f"{microbatches} micro-batches do not divide the batch of {batch_size}",
                        hint=f"use a divisor of {batch_size} "
                             f"(e.g. {_divisor_near(batch_size, microbatches)})"
                             + (": the one whose micro-batches are the given profile's size"
                                if one_profile else ", or auto"))
    v = chunks_per_rank(schedule, virtual_stages)
    if schedule != "auto":
        check_virtual_stages(schedule, num_stages * v, v)
    if isinstance(microbatches, int) and schedule != "auto":
        check_runnable(schedule, num_stages, microbatches, v)  # what torch refuses, e.g. 1F1B with m < p


def check_mip_options(time_limit: Any, mip_gap: Any, *, spent: bool) -> None:
    """Raise PlanError for a MIP time limit that is not a finite number of seconds (a
    negative one; 0 unless ``spent``, the share left to a solve once the limit is used up)
    or a gap outside [0, 1). ``None`` is not checked.

    An infinite limit was taken until 2026-12-07: the whole plan ran, then its file could not
    be written ("Out of range float values are not JSON compliant: inf").
    """
    def number(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    if time_limit is not None and not (number(time_limit)
                                       and (time_limit >= 0 if spent else time_limit > 0)):
        raise PlanError(f"time_limit = {time_limit!r}",
                        hint="give the seconds for the MIP solves, a positive finite number, e.g. 60")
    if mip_gap is not None and not (number(mip_gap) and 0 <= mip_gap < 1):
        raise PlanError(f"mip_gap = {mip_gap!r}", hint="give a fraction in [0, 1), e.g. 0.001")


def _check_size(profile: Profile, batch_size: int, microbatches: int) -> None:
    """Raise PlanError unless ``profile``'s micro-batch (dim 0 of its first input, where it
    has one) holds ``batch_size / microbatches`` samples: a plan records that size, and
    ``autopipe train`` builds the model at it (a plan of another size's profile was refused
    there, as made for another model)."""
    shape = profile.microbatch_shape[0] if profile.microbatch_shape else []
    size = batch_size // microbatches
    if shape and int(shape[0]) != size:
        have = int(shape[0])
        fits = batch_size // have if have and batch_size % have == 0 else None
        raise PlanError(
            f"the profile's micro-batches hold {have} samples, but a batch of {batch_size} in "
            f"{microbatches} micro-batches makes micro-batches of {size}",
            hint=(f"give --microbatches {fits} (micro-batches of the profile's size), or " if fits else "")
            + f"profile the model at {size} samples (its batch_size knob), or plan from the model "
              "(autopipe plan SPEC without --profile profiles each size)")


def chunks_per_rank(schedule: str, virtual_stages: Any) -> int:
    """The chunks per rank to plan ``schedule`` with: as given, else 2 for ``interleaved-1f1b``
    and 1 for the others (with ``auto``, the interleaved candidate's).

    Raises:
        PlanError: ``virtual_stages`` is not a positive number.
    """
    if virtual_stages is None:
        return DEFAULT_VIRTUAL_STAGES if schedule in MULTI_CHUNK else 1
    if isinstance(virtual_stages, bool) or not isinstance(virtual_stages, int) or virtual_stages < 1:
        raise PlanError(f"virtual_stages = {virtual_stages!r}", hint="use a positive number, e.g. 2")
    return virtual_stages


def _divisor_near(n: int, m: int) -> int:
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: (abs(d - m), d))


def plan_profile(
    profile: ProfileSource,
    *,
    num_stages: int,
    memory_limit: str | int | None = None,
    devices: DevicesArg | None = None,
    microbatches: int | str | None = None,
    batch_size: int | None = None,
    schedule: str = "1f1b",
    optimizer: str = "adam",
    method: str = "ilp",
    link_bandwidth: float | str | None = None,
    max_blocks: int = DEFAULT_MAX_BLOCKS,
    time_limit: float = 60.0,
    mip_gap: float = 1e-3,
    solver: str = "highs",
    deterministic: bool = True,
    dtype: str | None = None,
    granularity: str | None = None,
    cut_at: str | None = None,
    grad_sync: GradSync | None = None,
    recompute: str = "auto",
    virtual_stages: int | None = None,
    remake: str = "auto",
) -> Plan:
    """Partition a profiled model into pipeline stages.

    Args:
        profile: per-node costs of one micro-batch; or ``b -> Profile``, the costs of a
            micro-batch of ``b`` samples (needs ``batch_size``; called for ``b = batch_size / m``).
        num_stages: pipeline stages ``p``.
        memory_limit: one memory limit for every stage (``"80GiB"``, bytes); None = unlimited.
        devices: per-stage devices (a devices.json path or a list); excludes ``memory_limit``.
        microbatches: micro-batches per step ``m``; None = 2·p, or ``"auto"`` when
            ``batch_size`` is given; ``"auto"`` = every divisor of ``batch_size`` that the
            schedule can run, each with its own profile: the fastest predicted step wins.
        batch_size: samples per optimizer step (recorded with the micro-batch size).
        schedule: ``1f1b``, ``gpipe``, ``zb-h1``, ``interleaved-1f1b``, ``zbv``, ``dualpipev``
            (m ≥ 2p; [Note: DualPipeV] in ``autopipe.schedule.dualpipev``), or ``auto``
            (the fastest that fits of ``AUTO_SCHEDULES`` and ``AUTO_CHUNKED``).
        optimizer: for optimizer-state memory: ``adam``, ``adamw``, ``sgd``, ``sgd-momentum``, ``none``.
        method: ``ilp`` (optimal convex cuts), ``dp`` (optimal chain cuts for the slowest
            stage), ``uniform`` (equal layers), ``params`` (balanced parameters).
        link_bandwidth: bytes/s between stages; default the device spec's or 25 GB/s.
        max_blocks: coarsen graphs with more nodes to this many blocks (at least 8·p).
        time_limit: seconds for all MIP solves together ([Note: a candidate's time]; a
            search: each candidate a share, what is left to the candidates still open,
            ``autopipe.partition.search``).
        mip_gap: relative gap at which the MIP counts as solved.
        solver: ``highs`` (default) or ``cbc``.
        deterministic: record 0 solve seconds, so equal inputs give byte-identical plans.
        dtype: parameter dtype; default the profile's.
        granularity: ``node`` (cut anywhere) or ``layer``: cut only between the model's
            repeated blocks (``autopipe.partition.layers``), as torchtitan, DeepSpeed and
            Megatron-LM do; the plan records the unrestricted step and the ratio. None:
            ``layer`` where ``cut_at`` is given, else ``node``.
        cut_at: the blocks to cut between, a glob or regex over module paths
            (``model.layers.*``); implies ``granularity="layer"`` (``"node"`` with it is an
            error).
        grad_sync: the pipeline is one of ``grad_sync.replicas`` data-parallel replicas:
            each stage all-reduces its gradients over them before its optimizer step
            (``autopipe.partition.replicas``; ``autopipe.partition.degrees`` chooses it).
        recompute: activation recomputation: ``auto`` (recompute the blocks the ILP chooses,
            only where memory binds), ``none``, or ``full`` (every block that can be); with
            virtual stages too (per chunk); none under a schedule that splits the backward
            (zb-h1, zbv, dualpipev: ``autopipe.partition.problem.Problem.recompute_candidates``).
        virtual_stages: chunks per rank for ``interleaved-1f1b`` (default 2), ``zbv`` and
            ``dualpipev`` (2 only): the model is cut into ``num_stages`` × this many chunks,
            chunk c on rank c mod ``num_stages`` (zbv, dualpipev: in a V; [Note: chunks]); with ``auto``, the
            interleaved candidate's.
        remake: which values that depend on no input (a causal mask, rotary tables) a stage
            that reads them makes again instead of receiving them: ``auto`` (each where that
            is faster than sending it over a link), ``all`` or ``none`` ([Note: values made
            again] in ``autopipe.trace.remade``).
    Raises:
        PlanError: bad options, more stages than blocks (or layers), nothing found in the
            time limit, no repeated layers, a ``cut_at`` that matches no module.
        InfeasiblePlanError: no partition fits in memory (with any candidate, when searching).
        DeviceSpecError: a bad devices list or file.
    """
    if microbatches is None and batch_size is not None:
        microbatches = "auto"
    check_options(num_stages, microbatches, schedule, method, batch_size, granularity, recompute,
                  virtual_stages, remake, cut_at, one_profile=isinstance(profile, Profile))
    check_mip_options(time_limit, mip_gap, spent=True)
    if microbatches == "auto" and isinstance(profile, Profile):
        raise PlanError("microbatches='auto' profiles the model at each micro-batch size, "
                        "but only one profile was given",
                        hint="plan from the model (autopipe.plan, or autopipe plan SPEC without "
                             "--profile), or give --microbatches")
    if not isinstance(profile, Profile) and batch_size is None:
        raise PlanError("a profile per micro-batch size needs the batch size",
                        hint="pass batch_size, or a Profile")
    if isinstance(profile, Profile) and batch_size is not None and isinstance(microbatches, int):
        _check_size(profile, batch_size, microbatches)
    start = time.perf_counter()
    options = _Options(method=method, time_limit=time_limit, mip_gap=mip_gap, solver=solver,
                       deterministic=deterministic, optimizer=optimizer, dtype=dtype, max_blocks=max_blocks,
                       link_bandwidth=link_bandwidth, memory_limit=memory_limit, devices=devices,
                       layered=granularity == "layer" or cut_at is not None, cut_at=cut_at,
                       grad_sync=grad_sync, recompute=recompute, remake=remake)
    if isinstance(microbatches, int):
        counts = [microbatches]
    elif microbatches is None:
        counts = [2 * num_stages]
    else:
        assert batch_size is not None
        counts = [m for m in range(1, batch_size + 1) if batch_size % m == 0]
    schedules = [s for s in AUTO_SCHEDULES if s in SCHEDULES] if schedule == "auto" else [schedule]
    # auto: virtual_stages is the interleaved candidate's only (until 2026-12-07 1f1b, zb-h1
    # and gpipe were given it too, and each refused as a schedule of one chunk per rank)
    chunked = {s: 1 if schedule == "auto" else chunks_per_rank(s, virtual_stages) for s in schedules}
    if schedule == "auto" and num_stages > 1:
        for name, v in AUTO_CHUNKED:
            schedules.append(name)
            chunked[name] = 2 if name in V_SHAPED else virtual_stages or v
    cache: dict[int, Profile] = {}

    def profile_of(m: int) -> Profile:
        if isinstance(profile, Profile):
            return profile
        assert batch_size is not None
        b = batch_size // m
        if b not in cache:
            with not_solving():  # the MIP time is the solves' ([Note: time kept for the re-solves])
                cache[b] = profile(b)
        return cache[b]

    if len(counts) * len(schedules) == 1:
        plan = _plan_one(profile_of(counts[0]), num_stages, counts[0], schedules[0], options,
                         chunked[schedules[0]])
    else:
        plan = _search(profile_of, num_stages, counts, schedules, options, batch_size, chunked)
    if batch_size is not None:
        plan = replace(plan, options={**plan.options, "batch_size": batch_size,
                                      "microbatch_size": batch_size // plan.microbatches})
    seconds = 0.0 if deterministic else time.perf_counter() - start
    return replace(plan, solver=replace(plan.solver, seconds=seconds))


@dataclass(frozen=True, slots=True, kw_only=True)
class _Options:
    method: str
    time_limit: float
    mip_gap: float
    solver: str
    deterministic: bool
    optimizer: str
    dtype: str | None
    max_blocks: int
    link_bandwidth: float | str | None
    memory_limit: str | int | None
    devices: DevicesArg | None
    recompute: str = "none"
    remake: str = "auto"
    layered: bool = False
    cut_at: str | None = None
    grad_sync: GradSync | None = None
    beat: float = math.inf
    """In a search: the best step found so far. The MIPs look only for partitions at most
    this fast ([Note: a cutoff] in ``autopipe.partition.ilp``), recomputation is not tried
    where the candidate's bound cannot beat it, and a candidate that cannot raises Beaten."""
    share: float | None = None
    """In a search: the candidate's seconds for all its MIP solves (``time_limit`` else); a
    MIP that finds nothing in it makes the candidate unsolved, not an error of the search."""
    until: float | None = None
    """When the candidate's solves end (``time.perf_counter()``): ``_solve`` sets it from its
    time ([Note: a candidate's time])."""

    @property
    def mip_s(self) -> float:
        """Seconds for the next MIP solve: what is left of the candidate's time."""
        if self.until is not None:
            return max(0.0, self.until - time.perf_counter())
        return self.time_limit if self.share is None else self.share

    def halved(self) -> _Options:
        """These options with half of what is left of the candidate's time: for a solve that
        another of equal standing follows."""
        return replace(self, until=time.perf_counter() + self.mip_s / 2)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Built:
    """A candidate's problem, built and coarsened, before any solve."""

    profile: Profile
    problem: Problem
    free: Problem
    """``problem`` without the layer restriction (the same without one)."""
    layers: Layers | None
    """The restriction's layers (``layers.restrict``), None without one."""
    extra: dict[str, Any]
    """What the plan records of the options and the profile."""


def _plan_one(profile: Profile, num_stages: int, microbatches: int, schedule: str,
              options: _Options, virtual_stages: int = 1) -> Plan:
    """Plan one profile for one schedule and micro-batch count (``num_stages`` ranks, each
    running ``virtual_stages`` chunks)."""
    return _solve(_build(profile, num_stages, microbatches, schedule, options, virtual_stages), options)


def _solve(built: _Built, options: _Options, start: Plan | None = None) -> Plan:
    """Plan a built candidate with ``options`` (its step to beat and time share included);
    ``start``: a plan of it to start the MIP from (a search's second pass)."""
    if options.until is None:
        options = replace(options, until=time.perf_counter() + options.mip_s)
    # whether or not its stages make any value again: where making one again costs more than
    # sending it, the MIP cuts where it crosses no cut, which sending may beat
    sent = options.remake == "auto" and any(v.remade for v in built.problem.values)
    plan = _plan_recompute(built.problem, built.profile,
                           options.halved() if sent or built.layers is not None else options, start)
    if sent:
        plan = _or_sent(plan, built, options.halved() if built.layers is not None else options)
    if built.layers is not None:  # what the restriction costs: the same solve without it
        plan = record(plan, built.layers,
                      lambda: _plan_recompute(built.free, built.profile, replace(options, beat=math.inf)),
                      built.profile)
    extra = {**built.extra, **({"time_share_s": options.share} if options.share is not None else {})}
    return replace(plan, options={**extra, **plan.options})


def _or_sent(plan: Plan, built: _Built, options: _Options) -> Plan:
    """``plan``, planned with values made again, or the plan that sends every value where
    that is faster; the plan given records the other's step (``options.remake``).

    The ILP prices a value made again, at its cuts and on its readers ([Note: values made
    again] in ``autopipe.trace.remade``), but which values are made again is decided before
    it, one value at a time, against one send over one link: a value read on many stages is
    made again on each. The plan that sends every value bounds what that choice may cost.
    """
    cfg = built.problem.config
    sending = replace(options, remake="none")
    try:
        sent = _solve(_build(built.profile, cfg.num_ranks, cfg.microbatches, cfg.schedule, sending,
                             cfg.virtual_stages), sending)
    except (InfeasiblePlanError, Beaten):
        return replace(plan, options={**plan.options, "remake": {"mode": "auto", "sent_s": None}})
    if sent.predicted.iteration_s < plan.predicted.iteration_s:
        return replace(sent, options={**sent.options, "remake": {
            "mode": "auto", "remade_s": plan.predicted.iteration_s}})
    return replace(plan, options={**plan.options, "remake": {
        "mode": "auto", "sent_s": sent.predicted.iteration_s}})


def _build(profile: Profile, num_stages: int, microbatches: int, schedule: str,
           options: _Options, virtual_stages: int = 1) -> _Built:
    """The problem for one profile, schedule and micro-batch count.

    Raises:
        PlanError: the model has too few blocks for the stages (chunks).
    """
    bw = link_bandwidth_for(profile, options.link_bandwidth)
    devs = resolve_devices(num_stages, memory_limit=options.memory_limit, devices=options.devices,
                           profile=profile)
    ranks = num_stages
    num_stages *= virtual_stages  # the chunks are the ILP's stages ([Note: chunks])
    per_tensor, per_element = profile.optimizer.get(options.optimizer, (0.0, 0.0))
    per_byte = per_element / element_size(options.dtype or profile.dtype)
    sync = options.grad_sync if options.optimizer != "none" else None  # no gradients, no sync
    if sync is not None:
        per_byte = sync.step_per_byte(per_byte, devs)
    rt = profile.runtime
    cfg = Config(num_stages=num_stages, microbatches=microbatches, schedule=schedule,
                 devices=tuple(devs[placed_rank(schedule, c, ranks)] for c in range(num_stages)),
                 link_bandwidth=bw,
                 optimizer_step=(per_tensor, per_byte), virtual_stages=virtual_stages,
                 forward_overhead_s=rt.get("forward_overhead_s", 0.0),
                 backward_overhead_s=rt.get("backward_overhead_s", 0.0),
                 send_latency_s=rt.get("send_latency_s", 0.0) if num_stages > 1 else 0.0,
                 step_overhead_s=rt.get("step_overhead_s", 0.0),
                 allreduce_bandwidth=rt.get("allreduce_bandwidth", 0.0),
                 allreduce_latency_s=rt.get("allreduce_latency_s", 0.0),
                 rows_sum_bandwidth=rt.get("rows_sum_bandwidth", 0.0),
                 rows_sum_latency_s=rt.get("rows_sum_latency_s", 0.0), remake=options.remake)
    with phase("plan.problem"):
        base = from_profile(profile, cfg, optimizer=options.optimizer, dtype=options.dtype)
        if sync is not None:
            base = sync.shard(base)
        forced = merge_forced(base)
    if forced.num_real < num_stages:
        chunks = f" ({ranks} ranks × {virtual_stages} chunks)" if virtual_stages > 1 else ""
        raise PlanError(
            f"cannot cut the model into {num_stages} stages{chunks}: it has only {forced.num_real} "
            f"blocks that can be separated ({len(profile.nodes)} nodes)",
            hint=f"use at most {forced.num_real} stages"
                 + (" in all, or fewer --virtual-stages" if virtual_stages > 1 else ""))
    limit = max(options.max_blocks, 8 * num_stages)
    layers = None
    with phase("plan.coarsen"):
        problem = free = coarsen(forced, limit)
        if options.layered:
            layered, layers = restrict(base, options.cut_at)
            problem = coarsen(layered, limit)
        if options.recompute != "none":  # [Note: a region per layer] in autopipe.partition.costs
            node_layer = node_layers(base, layers.pattern if layers is not None else None)
            problem, free = replace(problem, node_layer=node_layer), replace(free, node_layer=node_layer)
    extra = {"optimizer": options.optimizer, "dtype": options.dtype or profile.dtype,
             "link_bandwidth": None if math.isinf(bw) else bw,
             "profile_device": profile.device, "profile_method": profile.method,
             "nodes": len(profile.nodes), "blocks": problem.size,
             "coarsened": problem.size < forced.size, "max_blocks": options.max_blocks,
             "mip_gap": options.mip_gap, "time_limit": options.time_limit,
             "solver": options.solver, "deterministic": options.deterministic,
             **({"remake": {"mode": options.remake}} if options.remake != "auto" else {}),
             **({"runtime": dict(profile.runtime)} if profile.runtime else {}),
             **({"grad_sync": sync.to_json()} if sync is not None else {}),
             **({"loss": {"forward_s": profile.loss.forward_s, "backward_s": profile.loss.backward_s}}
                if profile.loss is not None else {})}
    return _Built(profile=profile, problem=problem, free=free, layers=layers, extra=extra)


def _with_recompute(problem: Problem, mode: str) -> Problem:
    return problem.with_config(replace(problem.config, recompute=mode))


def _plan_recompute(problem: Problem, profile: Profile, options: _Options,
                    start: Plan | None = None) -> Plan:
    """The plan for ``options.recompute`` ([Note: recomputation] in ``autopipe.partition.costs``).

    ``none`` and ``full`` plan once. ``auto`` plans without recomputation first and keeps
    that plan unless memory binds: nothing fits, or (ILP) the best partition with no memory
    limits is faster than it. Then it plans again with the ILP choosing which blocks to
    recompute, started from the first plan, and keeps the faster of the two. ``start``:
    a plan for ``problem`` that every solve also starts from.
    """
    given = {} if start is None else {"start": _block_stages(problem, start)}
    mode = options.recompute
    if mode == "auto" and not _with_recompute(problem, "auto").recompute_candidates():
        mode = "none"  # nothing may be recomputed here (a split backward)
    if mode != "auto":
        try:
            plan = _plan(_with_recompute(problem, mode), profile, options, incumbents=given)
        except InfeasiblePlanError:
            raise
        except PlanError as e:  # the MIP found nothing in its time: and the chain?
            if options.share is not None or options.method != "ilp":
                raise
            raise _unsolved(problem, e, _setting(profile, options), mode) from e
        if mode == "full" or options.recompute == "none":  # none asked for, not auto's choice
            plan = replace(plan, options={**plan.options, "recompute": {"mode": mode}})
        return plan
    # where no chain split fits without recomputation, the solve without it is a long shot
    # (it must find a partition no heuristic does) and may not even prove there is none in
    # its time; where memory binds the chain's splits, recomputation's solve is likely to
    # beat it: either way it gets half, and recomputation's solve the rest ([Note: a
    # candidate's time])
    binds = not chain_fits(problem)
    with phase("plan.baselines"):
        chains = _Chains(problem)
    error: AutopipeError
    try:  # (a heuristic solves no MIP: no time to share)
        halve = binds or (options.method == "ilp" and chains.bind(options.mip_gap))
        plain: Plan | None = _plan(problem, profile, options.halved() if halve else options,
                                   incumbents=given, quiet=True, chains=chains)
    except (InfeasiblePlanError, Beaten) as e:
        plain, error = None, e
    except PlanError as e:  # nothing found in its time: recomputation may find one
        if not binds:
            raise
        plain, error = None, e
    if step_bound(problem) >= options.beat:  # recomputation only adds time
        if plain is None:
            raise error
        return plain
    if plain is not None and not _memory_binds(problem, plain, options, chains):
        return plain
    if plain is not None:
        given["plain"] = _block_stages(problem, plain)
    try:
        chosen = _plan(_with_recompute(problem, "auto"), profile, options, incumbents=given,
                       chains=chains)
    except (InfeasiblePlanError, Beaten):
        if plain is None:
            if isinstance(error, Beaten):
                raise error from None  # nothing fits and beats the best: it cannot win
            raise
        return plain
    except PlanError as e:  # the MIP found nothing in its time
        if plain is not None:
            return plain
        if options.share is None:
            raise _unsolved(problem, e, _setting(profile, options)) from e
        raise PlanError(  # a search records the candidate as unsolved, and why
            f"{error.message}; with recomputation: {e.message} (its share of the search's "
            f"time)", hint=e.hint) from e
    if plain is not None and not (chosen.recomputes and chosen.solver.objective_s
                                  < plain.solver.objective_s * (1 - options.mip_gap)):
        return plain  # recomputation gains nothing beyond the solver's gap
    return replace(chosen, options={**chosen.options, "recompute": {
        "mode": "auto", "without_s": None if plain is None else plain.predicted.iteration_s}})


# [Note: recomputation in a search]
#
# ``--microbatches auto``, ``--schedule auto`` and the degree search plan many candidates,
# and ``auto`` recomputation can cost each two more MIP solves (is memory binding? which
# blocks to recompute?): a GPT-2 medium batch search went from 88 s to past 25 minutes.
# In a search (``autopipe.partition.search``) the solves of a candidate share its part
# of ``time_limit`` ([Note: a candidate's time]) and take the best step so far as their
# cutoff; recomputation is skipped where the candidate's ``step_bound`` (recomputation
# only adds to it) is no better than that step, and otherwise its solves start from the
# plan without recomputation. A candidate's recomputing plan may then keep a larger gap
# (recorded in its solver block), never a slower plan than the one without recomputation.
#
# [Note: a candidate's time]
#
# A candidate (one plan, or one row of a search) may solve several MIPs: its partition,
# with ``auto`` recomputation whether memory binds and what to recompute, with ``auto``
# remaking the same again sending every value (``_or_sent``), with a layer restriction
# the same without it. Until 2026-12-06 each solve had the candidate's whole time, so
# ``autopipe plan examples/llama.py:build --spec-arg device=meta --stages 2 --batch-size 8
# --microbatches auto --schedule auto`` took 82–100 s against the default 60 s limit: the
# ZBV candidate's second pass was given 47 s and spent 62 s, in two solves (now 69 s, 60 s
# of it in the candidates: docs/planning.md). Now they share
# one deadline (``_Options.until``, set by ``_solve``): where a solve of equal standing
# follows (the plan that sends every value, the unrestricted plan), a solve gets half of
# what is left; recomputation's solves, which start from the plan without it, get what is
# left after it (none: the plan without recomputation stands), but where no chain split
# fits without recomputation: then the solve without it, which must find what no
# heuristic did, gets half, and finding nothing in it moves on to recomputation. It gets
# half too where memory binds the chain's splits (``_Chains.bind``: the fastest with no
# limit beats the fastest that fits), for recomputation's solve is then likely to find the
# faster plan: a Llama-2-70B shape with SGD on 16 H100s spent all 60 s proving its plan
# without recomputation within 1% (4.116 s), and recomputation's solve, with no time left,
# kept its start, 3.881 s, with a gap of 20%; with half each, the same plans, 6.3%. (A
# Llama-2-70B shape with Adam on 16 H100s spent the whole 60 s there, found no partition
# and proved none, and said to raise the time limit; now, where both solves find nothing,
# the error names what the most memory-balanced split needs recomputing every block, and
# a stage count that fits: ``_unsolved``.) So a candidate's MIPs end
# within its time, and a search's within ``time_limit`` ([Note: the search's order and
# shares]), each solve's own tie-break included. Plans solved one after another share it
# through ``autopipe.partition.mip_time.MipTime``: a degree search's finalists, and the
# re-solves of ``autopipe.refine`` after the first plan (``autopipe.plan``, ``autopipe
# plan``), which get what the first left (none: refine keeps re-timing the cuts it has).


def _block_stages(problem: Problem, plan: Plan) -> list[int]:
    """Block → stage of a plan made for ``problem``."""
    where = plan.stage_of
    return [where[b.nodes[0]] for b in problem.blocks]


def _setting(profile: Profile, options: _Options) -> Setting:
    """What an infeasible problem's hints rebuild it from (``autopipe.partition.infeasible``)."""
    shape = profile.microbatch_shape
    return Setting(optimizer=options.optimizer, element_size=element_size(options.dtype or profile.dtype),
                   samples=int(shape[0][0]) if shape and shape[0] else None)


def _unsolved(problem: Problem, error: PlanError, setting: Setting, mode: str = "auto") -> PlanError:
    """``error`` (no partition found in the time, with recomputation or without) with what
    the most memory-balanced chain split recomputing where that frees memory needs and what
    would fit, where no chain split fits even so: then it is as good as infeasible. The chain is
    ``auto``'s, which recomputes a block only where that frees memory: ``full``'s also
    recomputes where that costs some (a stage holding one micro-batch keeps each block's
    input besides its activations alive again), and a chain split that fit recomputing
    less was not found, the error said nothing fit, and its hint named more stages than
    needed (a Gemma-2-27B shape on 80 GB H100s: 17, where 16 fit). Under ``auto``, ``full``'s
    is asked too: recomputing every candidate is one of ``auto``'s choices, and ``full``'s
    chain prices a run of recomputed blocks as one region, keeping its first block's inputs
    only, where ``auto``'s keeps every block's. ``mode``, where the user chose ``none`` or
    ``full``: that mode's chain (a Qwen2-57B-A14B shape on 16 × 80 GB, ``--recompute
    full``, was told only to raise the time limit, where no chain split fits)."""
    some = _with_recompute(problem, mode)
    if chain_fits(some) or (mode == "auto" and chain_fits(_with_recompute(problem, "full"))):
        return error
    why = explain(some, "dp", setting)
    besides = ", with or without recomputation" if mode == "auto" else ""
    return InfeasiblePlanError(f"{error.message}{besides}; and {why.message}",
                               hint=f"{why.hint}; or raise the time limit (--time-limit) for a proof "
                               f"that no other partition fits either")


class _Chains:
    """The chain DP's splits (``min_bottleneck``) of a problem without recomputation, made
    once for the solves and checks of ``_plan_recompute`` that start from them."""

    def __init__(self, problem: Problem) -> None:
        cfg = problem.config
        self.problem = problem
        self.free = problem
        """``problem`` with no memory limits."""
        if any(d.memory > 0 for d in cfg.devices):
            self.free = problem.with_config(replace(cfg, devices=tuple(replace(d, memory=0)
                                                                       for d in cfg.devices)))

    @functools.cached_property
    def fitting(self) -> list[int] | None:
        """The fastest chain split that fits (None: none does)."""
        return min_bottleneck(Chain(self.problem))

    @functools.cached_property
    def fastest(self) -> list[int] | None:
        """The fastest chain split of ``free``."""
        return self.fitting if self.free is self.problem else min_bottleneck(Chain(self.free))

    def bind(self, gap: float) -> bool:
        """Whether memory binds the chain's splits: the fastest with no memory limit is
        faster, by more than ``gap``, than the fastest that fits. A sign, before any MIP,
        that recomputation's solve has a faster plan to find."""
        if self.free is self.problem or self.fastest is None:
            return False
        if self.fitting is None:
            return True
        return (evaluate(self.free, self.fastest).objective_s
                < evaluate(self.problem, self.fitting).objective_s * (1 - gap))


def _memory_binds(problem: Problem, plan: Plan, options: _Options, chains: _Chains) -> bool:
    """Whether some partition is faster than ``plan``'s (by more than the gap) once memory
    is no limit: only then can recomputation, which only adds time, give a faster plan.
    ``chains``: ``problem``'s; the fastest chain split with no limit often shows it at once."""
    cfg = problem.config
    if options.method != "ilp" or not any(d.memory > 0 for d in cfg.devices):
        return False  # a heuristic's split that fits is its answer; no limit never binds
    free = chains.free
    bar = plan.solver.objective_s * (1 - options.mip_gap)
    quick = chains.fastest
    if quick is not None and evaluate(free, quick).objective_s < min(bar, options.beat):
        return True
    res = solve_ilp(free, incumbent=_block_stages(problem, plan), time_limit=options.mip_s,
                    gap=options.mip_gap, solver=options.solver, break_ties=False,
                    cutoff=None if math.isinf(options.beat) else options.beat)
    return res.objective_s < min(bar, options.beat)  # only a winner is worth recomputing for


def _search(profile_of: Callable[[int], Profile], num_stages: int, counts: list[int],
            schedules: list[str], options: _Options, batch_size: int | None,
            chunked: dict[str, int] | None = None) -> Plan:
    """The fastest plan over micro-batch counts × schedules; every try is recorded
    (``autopipe.partition.search``, [Note: the search's order and shares]).

    ``options["search"]`` lists each candidate with its predicted step, or why it has none
    (torch cannot run it, nothing fits, it cannot beat the best). Ties go to fewer
    micro-batches, then to the earlier schedule in ``AUTO_SCHEDULES`` (1F1B holds fewer
    activations than GPipe). ``chunked``: chunks per rank of each schedule (default 1); a
    candidate with several whose model has too few blocks for them is recorded as such.
    """
    chunked = chunked or {}
    candidates: list[Candidate] = []
    for m in counts:
        for schedule in schedules:
            v = chunked.get(schedule, 1)
            row: dict[str, Any] = {"microbatches": m, "schedule": schedule}
            if v > 1:
                row["virtual_stages"] = v
            if batch_size is not None:
                row["microbatch_size"] = batch_size // m
            cand = Candidate(row=row, order=len(candidates), chunked=v > 1)
            try:
                check_runnable(schedule, num_stages, m, v)
            except PlanError as e:
                candidates.append(replace(cand, why=e.message))
                continue
            try:
                built = _build(profile_of(m), num_stages, m, schedule, options, v)
            except PlanError as e:
                if v == 1:
                    raise
                candidates.append(replace(cand, why=e.message))  # too few blocks for the chunks
                continue

            def solve(beat: float, share: float, start: Plan | None, built: _Built = built) -> Plan:
                return _solve(built, replace(options, beat=beat, share=share), start)

            candidates.append(replace(cand, bound=step_bound(built.problem), solve=solve))
    return search(candidates, options.time_limit, timed=not options.deterministic)


def predict(problem: Problem, ev: Evaluation, stage_of: Sequence[int]) -> Predicted:
    """Iteration time, bubble and per-stage peak memory of a partition, simulated.

    The step comes from the simulator (``autopipe.schedule.simulate``), whose rules
    the ILP's objective encodes exactly (each stage's optimizer step after its last task
    and the runtime's per-action work and send latency included), plus the
    tied-gradient sync and the runtime's per-step work.
    """
    cfg = problem.config
    steps = ev.optimizer_s or tuple(optimizer_steps(problem, stage_of))
    costs = [SimCost(forward_s=s.forward_s,
                     backward_input_s=max(0.0, s.backward_s - s.backward_weight_s),
                     backward_weight_s=s.backward_weight_s, send_s=s.send_s, return_s=s.return_s,
                     activation_bytes=(s.activations - s.recompute_bytes) // cfg.inflight(i),
                     optimizer_s=steps[i])
             for i, s in enumerate(ev.stages)]
    sim = simulate(costs, schedule=cfg.schedule, microbatches=cfg.microbatches,
                   virtual_stages=cfg.virtual_stages)
    if ev.ranks:
        # per chunk: its static memory and its part of its rank's peak, the activations it
        # holds at the rank's worst moment (and, for the chunk whose recomputation makes the
        # most alive again, those: [Note: recomputation]) or its optimizer step's
        # temporaries, whichever phase is the rank's peak (a rank's chunks' figures add up
        # to its peak)
        held = {c: r.moment[c] for r in ev.ranks for c in r.chunks}
        stepping = {c for r in ev.ranks if r.activations < r.optimizer_step for c in r.chunks}
        again = {max(r.chunks, key=lambda c: ev.stages[c].recompute_bytes): r.recompute_bytes
                 for r in ev.ranks}
        peak = tuple(s.held + (s.optimizer_step if i in stepping
                               else held[i] * costs[i].activation_bytes + again.get(i, 0) + s.workspace)
                     for i, s in enumerate(ev.stages))
    else:
        # a recomputed block's activations live again while its backward runs ([Note: recomputation])
        peak = tuple(s.held + max(sim.peak_activation_bytes[i] + s.recompute_bytes + s.workspace, s.optimizer_step)
                     for i, s in enumerate(ev.stages))
    return Predicted(iteration_s=sim.iteration_s + ev.tied_sync_s + cfg.step_overhead_s,
                     bubble_fraction=sim.bubble_fraction, peak_memory=peak)


def _plan(problem: Problem, profile: Profile, options: _Options, *,
          incumbents: dict[str, list[int]] | None = None, quiet: bool = False,
          chains: _Chains | None = None) -> Plan:
    """The plan of ``options.method`` for ``problem`` (its ``config.recompute`` included).

    ``incumbents``: more partitions to start the ILP from. ``quiet``: a problem that
    nothing fits raises a bare InfeasiblePlanError (no search for what would fit).
    ``chains``: the chain splits of ``problem`` without recomputation, made already.
    """
    method = options.method
    with phase("plan.baselines"):
        cands: dict[str, list[int] | None] = {
            "dp": chains.fitting if chains is not None and chains.problem is problem
            else min_bottleneck(Chain(problem)),
            "uniform": baselines.uniform(problem),
            "params": baselines.params(problem),
        }
        extra = dict(incumbents or {})
        cfg = problem.config
        if cfg.recompute != "none":
            # the fastest chain split with no memory limit often fits once it recomputes
            fastest = (chains or _Chains(_with_recompute(problem, "none"))).fastest
            if fastest is not None:
                extra["unlimited"] = fastest
        # each partition recomputes what it needs to fit, where the problem allows it
        chosen = {k: fit(problem, v) for k, v in {**cands, **extra}.items() if v is not None}
        evals = {k: evaluate(problem, v, chosen[k]) for k, v in {**cands, **extra}.items() if v is not None}
    for k, v in cands.items():
        assert v is None or not violations(problem, v), f"{k} made an invalid partition"
    lower = step_bound(problem)
    binaries = 0
    recompute: tuple[int, ...] | None = None

    def infeasible(method: str) -> AutopipeError:
        if quiet:
            return InfeasiblePlanError(f"no partition fits in memory ({method})", hint="")
        return explain(problem, method, _setting(profile, options))

    if method == "ilp":
        parts = {**cands, **extra}
        fitting = sorted((evals[k].objective_s, k) for k in evals if evals[k].fits)
        start = parts[fitting[0][1]] if fitting else None
        with phase("plan.solve"):
            res = solve_ilp(problem, incumbent=start, recompute=chosen[fitting[0][1]] if fitting else None,
                            time_limit=options.mip_s, gap=options.mip_gap, solver=options.solver,
                            cutoff=None if math.isinf(options.beat) else options.beat)
        binaries = res.binaries
        if res.stage_of is None:
            if res.status == "beaten":
                raise Beaten(res.lower_bound_s, options.beat)
            if res.status == "infeasible":
                raise infeasible("ilp")
            given = options.time_limit if options.share is None else options.share
            raise PlanError(f"the MIP solver found no partition in {given:g} s",
                            hint="raise the time limit (--time-limit), or lower --max-blocks")
        stage_of = list(res.stage_of)
        recompute = res.recompute
        status = res.status
        lower = max(lower, res.lower_bound_s)
        # a solution within the MIP's gap may simulate a hair slower than a split it started
        # from; the plan is then that split (never slower than a baseline it reports)
        step = predict(problem, evaluate(problem, stage_of, recompute), stage_of).iteration_s
        for _, k in fitting:
            part = parts[k]
            assert part is not None
            mine = predict(problem, evals[k], part).iteration_s
            if mine < step:
                stage_of, recompute, step = list(part), chosen[k], mine
    else:
        found = cands[method]
        if found is None and method == "dp" and problem.num_real >= problem.config.num_stages:
            raise infeasible("dp")  # the DP finds no chain split that fits in memory
        if found is None:
            raise PlanError(f"method {method!r} has no split into {problem.config.num_stages} "
                            f"stages for this model (too few layers)",
                            hint="use fewer stages, or method ilp or dp")
        if not evals[method].fits:
            if method == "dp":
                raise infeasible("dp")
            over = evals[method].overflow[0]
            cost = evals[method].stages[over]
            from autopipe._units import format_size

            raise InfeasiblePlanError(
                f"the {method} split does not fit: stage {over} needs {format_size(cost.memory)} "
                f"but {problem.config.devices[over].name} has {format_size(cost.limit)}",
                hint="use method ilp, which respects memory limits")
        stage_of = found
        recompute = chosen[method]
        status = "heuristic"
    with phase("plan.simulate"):
        ev = evaluate(problem, stage_of, recompute)
        objective = ev.objective_s
        lower = min(lower, objective)
        predicted = predict(problem, ev, stage_of)
        others = {}
        for k in ("dp", "uniform", "params"):
            if k == method:
                continue
            kv, ke = cands[k], evals.get(k)
            others[k] = baseline(problem, kv, ke,
                                 predict(problem, ke, kv).iteration_s
                                 if ke is not None and kv is not None else None)
    return Plan(
        graph_fingerprint=profile.graph_fingerprint, schedule=cfg.schedule,
        microbatches=cfg.microbatches, devices=cfg.devices[:cfg.num_ranks],
        stages=stages(problem, stage_of, ev),
        predicted=predicted,
        solver=SolverInfo(method=method, status=status, objective_s=objective, lower_bound_s=lower,
                          gap=(objective - lower) / objective if objective > 0 else 0.0, seconds=0.0),
        baselines=others, options={**({"ilp_binaries": binaries} if method == "ilp" else {}),
                                   **({"tied_sync_s": ev.tied_sync_s} if ev.tied_sync_s else {})})
