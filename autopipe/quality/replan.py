"""Plan a model again with the options an earlier plan recorded (``autopipe check --spec``)."""

from __future__ import annotations

import os
from typing import Any

from autopipe.errors import PlanError
from autopipe.partition.planner import DEFAULT_MAX_BLOCKS
from autopipe.plan_format import Plan
from autopipe.refine import ranks_of
from autopipe.spec import ModelSpec, example_target


def replan(spec: ModelSpec, old: Plan, profile: str | os.PathLike[str] | None = None) -> Plan:
    """Re-plan ``spec`` with ``old``'s ranks and chunks, devices, schedule, method, memory
    model, recomputation and values made again.

    The profile is ``profile`` (a saved profile's path) where given, else made the way
    ``old``'s was: measured here, or estimated for the same device spec
    (``options.profile_device == "estimate:<spec>"``).

    Raises:
        PlanError: ``old`` lacks the options needed (it was not written by ``autopipe plan``).
    """
    from autopipe.api import plan

    opts = old.options
    if "profile_method" not in opts:
        raise PlanError("the plan records no planner options (profile_method missing)",
                        hint="regenerate the baseline with `autopipe plan`")
    method = str(opts["profile_method"])
    device_spec = "h100"
    if method == "estimate":
        device_spec = str(opts.get("profile_device", "estimate:h100")).removeprefix("estimate:")
    recorded = opts.get("recompute")
    replicas = _replicas(old)
    return plan(
        spec.model, spec.example_inputs, example_kwargs=spec.example_kwargs,
        microbatches=old.microbatches, schedule=old.schedule, profile=method if profile is None else profile,
        **(_ranks(old) if replicas is None else {"num_stages": old.num_stages}), optimizer=str(opts.get("optimizer", "adam")),
        method=old.solver.method, device_spec=device_spec,
        dtype=str(opts["dtype"]) if opts.get("dtype") else None,
        **(replicas or {
            "devices": list(old.devices),
            "batch_size": opts["batch_size"] if isinstance(opts.get("batch_size"), int) else None,
            # a plan records None for infinitely fast links (free sends)
            "link_bandwidth": opts.get("link_bandwidth") or float("inf")}),
        max_blocks=int(opts.get("max_blocks", DEFAULT_MAX_BLOCKS)),
        time_limit=float(opts.get("time_limit", 60.0)),
        mip_gap=float(opts.get("mip_gap", 1e-3)), solver=str(opts.get("solver", "highs")),
        deterministic=bool(opts.get("deterministic", True)),
        loss_fn=spec.loss_fn, target=example_target(spec), **_granularity(opts),
        # measured here: priced and re-timed as the old plan was (--no-runtime-costs, --no-refine)
        runtime_costs="runtime" in opts, refine="refine" in opts,
        # a plan records its recomputation (none recorded only since 2026-12-07: else auto's choice)
        recompute=str(recorded.get("mode", "auto")) if isinstance(recorded, dict) else "auto",
        remake=_recorded_mode(opts.get("remake")))


def _ranks(old: Plan) -> dict[str, Any]:
    """The pipeline ranks and chunks per rank of a one-pipeline plan: its stages are chunks
    (``stage.rank`` says where each runs; ``old.devices`` holds one device per rank)."""
    ranks = len(set(ranks_of(old)))
    return {"num_stages": ranks,
            "virtual_stages": old.num_stages // ranks if old.num_stages > ranks else None}


def _recorded_mode(info: Any) -> str:
    """The ``--remake`` mode a plan was made with: ``{"mode": M, ...}``, absent for auto."""
    return str(info.get("mode", "auto")) if isinstance(info, dict) else "auto"


def _granularity(opts: dict[str, Any]) -> dict[str, Any]:
    """The layer restriction a plan was made with (none for plans that cut anywhere)."""
    info = opts.get("granularity")
    if not isinstance(info, dict):
        return {}
    return {"granularity": "layer", "cut_at": None if info.get("auto") else str(info["pattern"])}


def _replicas(old: Plan) -> dict[str, Any] | None:
    """The GPUs a data-parallel plan was searched for, its pipeline degree fixed (None for one
    pipeline): the search re-plans its micro-batch count and schedule on both placements."""
    dp, info = old.data_parallel, old.options.get("cluster")
    if dp is None or not isinstance(info, dict):
        return None
    return {"gpus": dp.world_size, "gpus_per_node": int(info["gpus_per_node"]),
            "intra_node_bandwidth": info.get("intra_node_bandwidth_given"),  # None: the profile's
            "inter_node_bandwidth": float(info["inter_node_bandwidth"]),
            "memory_limit": info.get("memory_limit"), "batch_size": dp.batch_size,
            "shard_optimizer": dp.shard_optimizer}
