"""``autopipe.plan()``: trace, profile and partition a model in one call."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

from torch import nn

from autopipe.batching import resize_batch, resize_target
from autopipe.errors import PlanError, PlanMismatchError, ProfileError
from autopipe.partition.devices import DevicesArg
from autopipe.partition.finalists import DEFAULT_FINALISTS
from autopipe.partition.mip_time import ROUNDS_SHARE, MipTime
from autopipe.partition.planner import (
    DEFAULT_MAX_BLOCKS,
    ProfileSource,
    check_options,
    plan_profile,
)
from autopipe.plan_format import Plan
from autopipe.profile.profile import Profile
from autopipe.refine import can_refine, refine_candidate, refine_search
from autopipe.refine import refine as refine_plan
from autopipe.trace import Graph, trace
from autopipe.trace._state import state_kept

PROFILE_MODES = ("measure", "estimate")

_Planner = TypeVar("_Planner", bound=Callable[..., Plan])


def _model_left_as_it_was(planner: _Planner) -> _Planner:
    """``planner(model, ...)`` leaves ``model``'s buffers and the random state as they were:
    profiling runs the model (until 2026-12-07 a plan moved the random stream a seeded
    training goes on with)."""
    @functools.wraps(planner)
    def kept(model: nn.Module, *args: Any, **kwargs: Any) -> Plan:
        if not isinstance(model, nn.Module):
            return planner(model, *args, **kwargs)  # the planner says what is wrong
        with state_kept(model):
            return planner(model, *args, **kwargs)
    return cast(_Planner, kept)


@_model_left_as_it_was
def plan(
    model: nn.Module,
    example_inputs: tuple[Any, ...],
    *,
    example_kwargs: dict[str, Any] | None = None,
    num_stages: int | None = None,
    memory_limit: str | int | None = None,
    devices: DevicesArg | None = None,
    microbatches: int | str | None = None,
    batch_size: int | None = None,
    schedule: str | Sequence[str] | None = None,
    virtual_stages: int | None = None,
    profile: str | os.PathLike[str] | Profile = "measure",
    optimizer: str = "adam",
    method: str = "ilp",
    device_spec: str | None = None,
    dtype: str | None = None,
    link_bandwidth: float | str | None = None,
    max_blocks: int = DEFAULT_MAX_BLOCKS,
    time_limit: float = 60.0,
    mip_gap: float = 1e-3,
    solver: str = "highs",
    deterministic: bool = True,
    refine: bool = True,
    loss_fn: Callable[[Any, Any], Any] | None = None,
    target: Any = None,
    runtime_costs: bool = True,
    recompute: str = "auto",
    remake: str = "auto",
    granularity: str | None = None,
    cut_at: str | None = None,
    gpus: int | None = None,
    gpus_per_node: int | None = None,
    intra_node_bandwidth: float | str | None = None,
    inter_node_bandwidth: float | str | None = None,
    microbatch_sizes: Sequence[int] | None = None,
    shard_optimizer: bool = False,
    screen: str | None = "dp",
    finalists: int | None = None,
) -> Plan:
    """Plan pipeline stages for ``model``.

    Args:
        model: the model (may live on the meta device with ``profile="estimate"``).
        example_inputs: positional inputs of one micro-batch.
        example_kwargs: keyword inputs of one micro-batch.
        num_stages: pipeline stages (with ``gpus``: try only this many).
        memory_limit: one memory limit per stage (``"80GiB"`` or bytes); None = unlimited.
        devices: per-stage devices: a devices.json path or a list (see
            ``autopipe.partition.devices``); excludes ``memory_limit``.
        microbatches: micro-batches per step; None = 2 × stages (``"auto"`` with
            ``batch_size``); ``"auto"``: every count that divides ``batch_size``, each
            profiled at its own micro-batch size; the fastest predicted step wins.
        batch_size: samples per optimizer step; ``example_inputs`` are one micro-batch
            whose size is dim 0 of their first tensor (see ``autopipe.batching``), and
            are cut or tiled along dim 0 to ``batch_size / microbatches`` samples.
        schedule: ``1f1b``, ``gpipe``, ``zb-h1``, ``interleaved-1f1b``, or ``auto`` (the
            fastest that fits, interleaved with 2 chunks per rank among them); default
            ``1f1b``, ``auto`` with ``gpus``; with ``gpus`` also a list of them to try.
        virtual_stages: ``interleaved-1f1b``: chunks per rank (default 2); the model is cut
            into ``num_stages`` × this many chunks, chunk c on rank c mod ``num_stages``.
        profile: ``"measure"`` (time the nodes here), ``"estimate"`` (FLOPs and bytes on
            ``device_spec``), a Profile, or the path of a saved profile.
        optimizer: for optimizer-state memory (``adam``, ``adamw``, ``sgd``, ``sgd-momentum``, ``none``).
        method: ``ilp``, ``dp``, ``uniform`` or ``params``.
        device_spec: the device to estimate for (with ``profile="estimate"`` only; default
            ``h100``).
        dtype: compute dtype to profile in (``bf16``…); None keeps the model's. Parameter
            memory is counted in the profile's dtype. With ``"measure"`` or ``"estimate"``
            only: a given profile has its own.
        link_bandwidth: bytes/s between stages; default the device spec's, else 25 GB/s.
        max_blocks: graphs with more nodes are coarsened to this many blocks.
        time_limit: seconds for all MIP solves together (a search shares them out; with
            ``refine``, a quarter is kept for the re-solves on whole-stage times; profiling
            is not counted: [Note: time kept for the re-solves]).
        mip_gap: relative gap at which the MIP counts as solved.
        solver: ``highs`` or ``cbc``.
        deterministic: leave solve seconds out (0), so equal inputs give byte-identical JSON.
        refine: with ``profile="measure"``, re-time each planned stage as one module
            where the model lives and re-solve until the cuts stay
            (``autopipe.refine``; recorded in ``plan.options["refine"]``). A search
            (``batch_size`` or ``gpus``) compares its candidates on their node sums, then
            refines its finalists and keeps the fastest refined ([Note: finalists re-timed]
            in ``autopipe.partition.finalists``).
        loss_fn: with ``target`` (one micro-batch's), the training loss: profiled on the
            model's output and charged to the last stage (``spec.loss_fn`` and
            ``autopipe.spec.example_target(spec)`` for a spec). Without it the plan leaves
            the loss out.
        target: the target of one micro-batch.
        runtime_costs: with ``profile="measure"`` on the CPU, measure the runtime's fixed
            costs here too (``autopipe.runtime.calibrate``, about 10 s: per action, per
            send, per step) and plan with them.
        recompute: activation recomputation ([Note: recomputation] in
            ``autopipe.partition.costs``): ``auto`` (only where memory binds: the blocks the
            ILP chooses with the cuts), ``none``, or ``full`` (every block that can be).
        remake: which values that depend on no input (a causal mask, rotary tables) a stage
            that reads them makes again instead of receiving them ([Note: values made again]
            in ``autopipe.trace.remade``): ``auto`` (each where that is faster than sending it
            over a link), ``all`` or ``none``; ``plan.stages[i].remade`` lists them.
        granularity: ``node`` (cut anywhere) or ``layer``: cut only between the model's
            repeated blocks (its longest module list ``X.0, X.1, …`` by work), as torchtitan,
            DeepSpeed and Megatron-LM do; ``plan.options["granularity"]`` records the
            units, the unrestricted step and the ratio (``autopipe.partition.layers``).
            None: ``layer`` where ``cut_at`` is given, else ``node``.
        cut_at: the blocks to cut between, a glob or regex over module paths
            (``model.layers.*``); implies ``granularity="layer"`` (``"node"`` with it is an
            error).
        gpus: instead of ``num_stages``, the GPUs to train on: every pipeline degree ``p``
            dividing it, with ``gpus / p`` data-parallel replicas that split ``batch_size``,
            is searched (``autopipe.partition.degrees.plan_degrees``; ``microbatches`` then
            counts per replica, ``method`` plans the fastest candidates, the chain DP the rest).
        gpus_per_node: GPUs per node (default: all on one).
        intra_node_bandwidth: bytes/s between GPUs of a node (default: the device spec's link).
        inter_node_bandwidth: bytes/s per GPU between nodes (default 50 GB/s).
        microbatch_sizes: with ``gpus``, the micro-batch sizes to try (default: all divisors).
        shard_optimizer: with ``gpus``, shard optimizer states over the replicas (ZeRO-1).
        screen: with ``gpus``, the method every candidate is planned with first (``dp``;
            None: ``method`` for all), as ``autopipe plan --screen``.
        finalists: with ``gpus``, how many of the fastest screened candidates ``method``
            plans again (default ``DEFAULT_FINALISTS``), as ``autopipe plan --finalists``.

    Returns:
        The plan; ``plan.save(path)`` writes it.

    Raises:
        PlanError: bad options; InfeasiblePlanError when nothing fits in memory.
        PlanMismatchError: a given profile belongs to another model or input shape.
        TraceError, ProfileError, DeviceSpecError: from tracing, profiling, the devices.
    """
    if gpus is None:
        if num_stages is None:
            raise PlanError("autopipe.plan needs num_stages (pipeline stages) or gpus (the planner "
                            "chooses stages x data-parallel replicas)", hint="pass num_stages=4 or gpus=8")
        if schedule is not None and not isinstance(schedule, str):
            raise PlanError(f"schedule={list(schedule)!r}: a list of schedules is searched only "
                            "with gpus=N", hint="pass one schedule, or 'auto', or pass gpus")
        schedule = schedule or "1f1b"
        check_options(num_stages, microbatches, schedule, method, batch_size, granularity, recompute,
                      virtual_stages, remake, cut_at, time_limit=time_limit, mip_gap=mip_gap,
                      one_profile=not (isinstance(profile, str) and profile in PROFILE_MODES))
        extra = {"gpus_per_node": gpus_per_node, "intra_node_bandwidth": intra_node_bandwidth,
                 "inter_node_bandwidth": inter_node_bandwidth, "microbatch_sizes": microbatch_sizes}
        given = [k for k, v in {**extra, "shard_optimizer": shard_optimizer or None,
                                "finalists": finalists, "screen": None if screen == "dp" else screen}.items()
                 if v is not None]
        if given:
            raise PlanError(f"{given[0]} applies with gpus=N only", hint=f"drop {given[0]}, or pass gpus")

    _check_profiling_options(profile, device_spec, dtype)
    device_spec = device_spec or "h100"
    if isinstance(max_blocks, bool) or not isinstance(max_blocks, int) or max_blocks < 1:
        # the CLI's --max-blocks refuses it; the API planned on as if it were not given
        raise PlanError(f"max_blocks = {max_blocks!r}", hint="give a positive number of blocks to "
                        f"coarsen to, e.g. the default {DEFAULT_MAX_BLOCKS}")
    if (loss_fn is None) != (target is None):
        have, missing = ("loss_fn", "target") if target is None else ("target", "loss_fn")
        raise PlanError(f"{have} was given without {missing}: the loss is profiled as loss_fn(output, "
                        "target) on one micro-batch", hint=f"pass {missing} too (e.g. spec.loss_fn and "
                        "spec.batch(1)[1]), or neither to plan without the loss")
    loss = {"loss_fn": loss_fn, "target": target} if loss_fn is not None and target is not None else {}
    with_runtime = _runtime_costs(optimizer) if runtime_costs and profile == "measure" else None

    def sized(size: int) -> tuple[tuple[Any, ...], dict[str, Any], dict[str, Any]]:
        """The example inputs and the loss's target at micro-batches of ``size`` samples."""
        args, kwargs = resize_batch(example_inputs, example_kwargs, size)
        return args, kwargs, ({**loss, "target": resize_target(target, example_inputs, example_kwargs, size)}
                              if loss else loss)

    def profile_at(args: tuple[Any, ...], kwargs: dict[str, Any] | None,
                   at: dict[str, Any] | None = None) -> Profile:
        prof = _profile(trace(model, args, kwargs), profile, args, kwargs,
                        device_spec=device_spec, dtype=dtype, loss=loss if at is None else at)
        return with_runtime(prof) if with_runtime is not None else prof

    def profile_of_size(size: int) -> Profile:
        args, kwargs, at = sized(size)
        return profile_at(args, kwargs, at)

    measured_here = isinstance(profile, str) and profile in PROFILE_MODES
    refining = refine and profile == "measure"  # the re-solves get their share of time_limit
    profiles: dict[int, Profile] = {}  # a search's, by micro-batch size

    def source(size: int) -> Profile:
        profiles[size] = profile_of_size(size)
        return profiles[size]

    traced: dict[int, Graph] = {}

    def refined_choice(found: Plan, size: int, replan: Callable[[Profile], Plan]) -> Plan:
        """A search's candidate of micro-batches of ``size``, refined where it was measured here."""
        if not (refining and size in profiles):
            return found
        args, kwargs, at = sized(size)
        if size not in traced:  # each finalist of this size, and the winner again, on one trace
            traced[size] = trace(model, args, kwargs)
        graph = traced[size]
        if can_refine(graph, profiles[size]) is not None:
            return found
        # its baselines planned as the candidate alone: a degree search's by its own replan
        by_method = ((lambda p, m, **c: replan(p, method=m)) if gpus is not None  # type: ignore[call-arg]
                     else (lambda p, m, **c: solve(p, **{**c, "method": m, "batch_size": None})))
        return refine_candidate(found, profiles[size], graph, args, kwargs, replan, baseline_plan=by_method, **at)

    if gpus is not None:
        from autopipe.partition.degrees import plan_degrees

        if devices is not None or link_bandwidth is not None:
            raise PlanError("gpus=N takes no devices or link_bandwidth: the GPUs are alike",
                            hint="give memory_limit, intra_node_bandwidth and inter_node_bandwidth")
        if virtual_stages is not None:
            raise PlanError("gpus=N plans one stage per rank: it takes no virtual_stages",
                            hint="drop virtual_stages, or pass num_stages instead of gpus")
        if batch_size is None:
            raise PlanError("gpus=N needs batch_size: the samples per step over all GPUs, which the "
                            "data-parallel replicas split", hint="e.g. gpus=8, batch_size=64")
        return plan_degrees(
            source if measured_here else profile_at(example_inputs, example_kwargs),
            gpus=gpus, batch_size=batch_size, gpus_per_node=gpus_per_node,
            intra_node_bandwidth=intra_node_bandwidth, inter_node_bandwidth=inter_node_bandwidth,
            stages=num_stages, microbatches=microbatches, microbatch_sizes=microbatch_sizes,
            schedule=schedule or "auto", shard_optimizer=shard_optimizer, memory_limit=memory_limit,
            screen=screen, finalists=DEFAULT_FINALISTS if finalists is None else finalists,
            optimizer=optimizer, method=method, max_blocks=max_blocks, time_limit=time_limit,
            mip_gap=mip_gap, solver=solver, deterministic=deterministic, dtype=dtype,
            granularity=granularity, cut_at=cut_at, recompute=recompute, remake=remake,
            refine=refined_choice if refining else None)
    assert num_stages is not None and schedule is not None

    mip = MipTime(time_limit)  # refine's solves share it

    def solve(source: ProfileSource, **choice: Any) -> Plan:
        """Plan ``source``; ``choice`` replaces options (``refine_choice``'s one candidate)."""
        given = dict(num_stages=num_stages, microbatches=microbatches, batch_size=batch_size,
                     schedule=schedule, virtual_stages=virtual_stages, method=method)
        return mip.give(1, lambda seconds: plan_profile(
            source, **{**given, **choice}, memory_limit=memory_limit, devices=devices,
            optimizer=optimizer, link_bandwidth=link_bandwidth,
            max_blocks=max_blocks, time_limit=seconds, mip_gap=mip_gap, solver=solver,
            deterministic=deterministic, granularity=granularity, cut_at=cut_at,
            recompute=recompute, remake=remake))

    if batch_size is not None and measured_here:
        if refining:
            mip.hold()
        found = solve(source)
        if not refining:
            return found
        return refine_search(found, profiles, solve, refined_choice, mip=mip)
    graph = trace(model, example_inputs, example_kwargs)
    prof = _profile(graph, profile, example_inputs, example_kwargs, device_spec=device_spec, dtype=dtype,
                    loss=loss)
    if with_runtime is not None:
        prof = with_runtime(prof)
    refining = refining and can_refine(graph, prof) is None
    if refining:
        mip.hold()
    plan = solve(prof)
    if refining:
        mip.share_among(ROUNDS_SHARE)
        plan = refine_plan(plan, prof, graph, example_inputs, example_kwargs, solve,
                           baseline_plan=lambda p, m, **c: solve(p, method=m, **c), **loss)
    return plan


def _check_profiling_options(profile: str | os.PathLike[str] | Profile, device_spec: str | None,
                             dtype: str | None) -> None:
    """Refuse profiling options that the chosen profile does not use, as the CLI refuses
    ``--device-spec`` or ``--dtype`` with ``--profile`` (until 2026-12-07 the API planned on
    without them, as if they had been applied).

    Raises:
        PlanError: ``device_spec`` without ``profile="estimate"``, or ``dtype`` with a given profile.
    """
    mode = profile if isinstance(profile, str) and profile in PROFILE_MODES else None
    given = "a Profile" if isinstance(profile, Profile) else f"profile={str(profile)!r}"
    if device_spec is not None and mode != "estimate":
        raise PlanError(f"device_spec={device_spec!r} applies only with profile='estimate', but "
                        f"{given} " + ("times the model here" if mode == "measure" else "gives the costs"),
                        hint="drop device_spec, or pass profile='estimate'"
                             + ("" if mode else " (or estimate the profile for that device: "
                                                "autopipe profile SPEC --device meta --device-spec NAME)"))
    if dtype is not None and mode is None:
        raise PlanError(f"dtype={dtype!r} applies only when autopipe profiles the model "
                        f"(profile='measure' or 'estimate'), but {given} gives the costs",
                        hint="drop dtype, or profile in that dtype (autopipe profile SPEC --dtype ...)")


def _runtime_costs(optimizer: str) -> Callable[[Profile], Profile]:
    """Gives a profile measured here the runtime's costs (``autopipe.runtime.calibrate``),
    measured once for all the profiles of one call."""
    from autopipe.runtime.calibrate import runtime_profiler

    return runtime_profiler(optimizer if optimizer != "none" else "sgd")


def _profile(graph: Graph, profile: str | os.PathLike[str] | Profile, args: tuple[Any, ...],
             kwargs: dict[str, Any] | None, *, device_spec: str, dtype: str | None,
             loss: dict[str, Any]) -> Profile:
    """The Profile to plan with, checked against the traced graph."""
    if isinstance(profile, Profile):
        prof = profile
    elif profile == "measure":
        from autopipe.profile import measure

        return measure(graph, args, kwargs, dtype=dtype, **loss)
    elif profile == "estimate":
        from autopipe.profile import estimate

        return estimate(graph, args, kwargs, device_spec=device_spec, dtype=dtype, **loss)
    elif isinstance(profile, (str, os.PathLike)) and (
            str(profile).endswith(".json") or os.path.exists(profile)):
        prof = Profile.load(profile)
    else:
        raise PlanError(f"profile={profile!r} is neither a mode nor a file",
                        hint=f"use {' or '.join(PROFILE_MODES)}, a Profile, or a profile .json path")
    check_profile(graph, prof)
    return prof.with_marks(graph)


def check_profile(graph: Graph, profile: Profile) -> None:
    """Raise PlanMismatchError unless ``profile`` was made for ``graph``."""
    if profile.graph_fingerprint and profile.graph_fingerprint != graph.fingerprint:
        raise PlanMismatchError(
            f"the profile is for another model or input shape (fingerprint "
            f"{profile.graph_fingerprint[:12]}, this model {graph.fingerprint[:12]})",
            hint="profile this model again (autopipe profile), or pass the matching SPEC")
    names = {n.name for n in graph.nodes}
    have = {n.name for n in profile.nodes}
    if names != have:
        missing = sorted(names - have)
        raise PlanMismatchError(
            f"the profile's nodes differ from the model's ({len(names - have)} missing, "
            f"{len(have - names)} extra{', e.g. ' + missing[0] if missing else ''})",
            hint="profile this model again")
    if not profile.nodes:
        raise ProfileError("the profile has no nodes", hint="profile the model again")
