"""Hand a layer-granular Plan to the engines users run: torchtitan, DeepSpeed, Megatron-LM.

Reads a Plan only (no model, no solver, no runtime): ``export_plan(plan, "megatron")``
gives a JSON object (``"schema": "autopipe.export/1"``) with what that engine takes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from autopipe.errors import ExportError
from autopipe.export import deepspeed, megatron, tied, torchtitan
from autopipe.export.placement import pipeline_ranks, stage_ranks
from autopipe.export.split import LayerSplit, layer_split
from autopipe.plan_format import Plan

SCHEMA = "autopipe.export/1"
FORMATS: dict[str, Callable[[Plan, LayerSplit], dict[str, Any]]] = {
    "torchtitan": torchtitan.export,
    "deepspeed": deepspeed.export,
    "megatron": megatron.export,
}


def export_plan(plan: Plan, fmt: str) -> dict[str, Any]:
    """``plan``'s stages in the terms of engine ``fmt`` (one of ``FORMATS``).

    Raises:
        ExportError: an unknown format, a plan that does not give every stage whole
            layers (planned without ``granularity="layer"``), or one whose stages the engine
            cannot place where the plan does (``autopipe.export.placement``).
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}", hint=f"choose one of {', '.join(FORMATS)}")
    split = layer_split(plan)
    out = FORMATS[fmt](plan, split)
    # [Note: tied parameters in an export], [Note: the model's own parameters in an export]
    out["notes"] = [*out["notes"], *tied.notes(plan, fmt), *tied.root_notes(plan, fmt)]
    return {"schema": SCHEMA, "format": fmt,
            "plan": {"graph_fingerprint": plan.graph_fingerprint, "pattern": split.pattern,
                     "layers": split.num_layers, "layers_per_stage": split.layers_per_stage(),
                     "schedule": plan.schedule, "stage_ranks": stage_ranks(plan),
                     "pipeline_ranks": pipeline_ranks(plan), "data_parallel_replicas": plan.replicas,
                     "recompute": [split.recomputed(s) for s in range(plan.num_stages)]
                     if split.recompute_units else None,
                     "predicted_step_s": plan.predicted.iteration_s},
            **out}


__all__ = ["FORMATS", "SCHEMA", "LayerSplit", "export_plan", "layer_split"]
