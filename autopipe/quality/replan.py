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
    model, recomputation and values made again; a plan a search chose, by the same search
    ([Note: re-planning a search]).

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
    device_spec = None
    if method == "estimate" and profile is None:
        device_spec = str(opts.get("profile_device", "estimate:h100")).removeprefix("estimate:")
    recorded = opts.get("recompute")
    replicas = _replicas(old)
    choice = searched(old) or {"microbatches": old.microbatches, "schedule": old.schedule,
                               **(_ranks(old) if replicas is None else {"num_stages": old.num_stages})}
    return plan(
        spec.model, spec.example_inputs, example_kwargs=spec.example_kwargs,
        profile=method if profile is None else profile, **choice, optimizer=str(opts.get("optimizer", "adam")),
        method=old.solver.method, device_spec=device_spec,
        dtype=str(opts["dtype"]) if opts.get("dtype") and profile is None else None,
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


# [Note: re-planning a search]
#
# A plan made with --batch-size (micro-batch counts x schedules) or --gpus (pipeline
# degrees x micro-batch sizes x schedules) is the winner of a search, whose rows the plan
# records (options["search"], options["degrees"]). Until 2026-12-07 `check --spec`
# re-planned only the winner's own choice, so a change that made the search pick worse, or
# that a candidate the search had beaten now wins, went unseen: it compared one candidate
# with itself. The search is now run again over what the rows show it tried: the stage
# counts, schedules, micro-batch counts or sizes, with the recorded screen and finalists.
# Its winner may have micro-batches of another size; the plans are then compared per step
# of the same batch (`compare_plans(same_model=True)`).


def searched(old: Plan) -> dict[str, Any] | None:
    """The options that run ``old``'s search again (None: ``old`` was not a search's choice).

    Raises:
        PlanError: the search record is malformed.
    """
    opts = old.options
    rows = opts.get("degrees") if old.data_parallel is not None else opts.get("search")
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        return None
    try:
        schedules = sorted({str(r["schedule"]) for r in rows})
        counts = sorted({int(r["microbatches"]) for r in rows})
        if old.data_parallel is None:
            # the interleaved candidate's chunks, as --virtual-stages gave them (until
            # 2026-12-07 the search was re-run with the default 2)
            chunks = [int(r["virtual_stages"]) for r in rows
                      if r.get("schedule") == "interleaved-1f1b" and r.get("virtual_stages")]
            return {"schedule": "auto" if len(schedules) > 1 else schedules[0],
                    "microbatches": "auto" if len(counts) > 1 else counts[0],
                    **({"virtual_stages": chunks[0] if chunks and chunks[0] != 2 else None,
                        "num_stages": len(set(ranks_of(old)))}
                       if len(schedules) > 1 else _ranks(old))}
        stages = sorted({int(r["stages"]) for r in rows})
        sizes = sorted({int(r["microbatch_size"]) for r in rows})
    except (KeyError, TypeError, ValueError) as e:
        raise PlanError(f"the plan's search record is malformed ({type(e).__name__}: {e})",
                        hint="regenerate the plan with `autopipe plan`") from None
    info = opts.get("cluster", {})
    return {"num_stages": stages[0] if len(stages) == 1 else None,
            # several: as the CLI's default (a list given to --schedule is not recorded)
            "schedule": "auto" if len(schedules) > 1 else schedules[0],
            **({"microbatches": counts[0]} if len(counts) == 1 else {"microbatch_sizes": sizes}),
            "screen": info.get("screen", "dp") if isinstance(info, dict) else "dp",
            **({"finalists": int(info["finalists"])} if isinstance(info, dict) and "finalists" in info else {})}


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
