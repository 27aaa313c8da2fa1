"""Hand a layer-granular Plan to the engines users run: torchtitan, DeepSpeed, Megatron-LM.

Reads a Plan (no model, no solver, no runtime): ``export_plan(plan, "megatron")`` gives a
JSON object (``"schema": "autopipe.export/1"``) with what that engine takes. The torchtitan
and DeepSpeed parts also hold the parameters no node reads, and notes name the copies a part
keeps without reading them, from the plan's record of the parameters each stage reads (or the
profile the plan was made from: [Note: every parameter in a part] in ``autopipe.export.params``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from autopipe.errors import ExportError
from autopipe.export import deepspeed, megatron, params, tied, torchtitan
from autopipe.export.placement import pipeline_ranks, stage_ranks
from autopipe.export.split import LayerSplit, layer_split
from autopipe.plan_format import Plan
from autopipe.profile.profile import Profile

SCHEMA = "autopipe.export/1"
FORMATS: dict[str, Callable[[Plan, LayerSplit], dict[str, Any]]] = {
    "torchtitan": torchtitan.export,
    "deepspeed": deepspeed.export,
    "megatron": megatron.export,
}


def export_plan(plan: Plan, fmt: str, profile: Profile | None = None) -> dict[str, Any]:
    """``plan``'s stages in the terms of engine ``fmt`` (one of ``FORMATS``).

    Args:
        plan: a plan made with ``granularity="layer"``.
        fmt: the engine.
        profile: the profile ``plan`` was made from, for a plan made before its layer record
            named the parameters each stage reads (2026-12-08): the parts then hold every
            parameter of the model ([Note: every parameter in a part] in
            ``autopipe.export.params``); checked against the plan where given.

    Raises:
        ExportError: an unknown format, a plan that does not give every stage whole
            layers (planned without ``granularity="layer"``), or one whose stages the engine
            cannot place where the plan does (``autopipe.export.placement``).
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}", hint=f"choose one of {', '.join(FORMATS)}")
    split = layer_split(plan)
    try:
        out = FORMATS[fmt](plan, split)
    except ExportError as e:
        raise ExportError(e.message, hint=_checked_hint(plan, split, fmt, e.hint)) from None
    params.complete(fmt, plan, profile, out)  # [Note: every parameter in a part]
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


def _checked_hint(plan: Plan, split: LayerSplit, fmt: str, hint: str | None) -> str | None:
    """``hint`` (format ``fmt``'s refusal of ``plan``), told which of the other formats it
    sends the user to refuse the plan too.

    [Note: a hint to another format]
    Megatron-LM's refusals send the user to torchtitan or DeepSpeed, and torchtitan's to
    DeepSpeed, without asking them: a Wav2Vec2 plan that Megatron-LM refused (its conv
    feature extractor inside E) was sent to torchtitan, which refused it too (a parameter
    on ``wav2vec2`` itself, which encloses layers of another stage), until 2026-12-07.
    """
    if not hint:
        return hint
    named = [f for f in FORMATS if f != fmt and f in hint]
    refused: dict[str, str] = {}
    for other in named:
        try:
            FORMATS[other](plan, split)
        except ExportError as e:
            refused[other] = e.message
    if not refused:
        return hint
    why = "; ".join(f"{f}: {m}" for f, m in refused.items())
    took = [f for f in named if f not in refused]
    if took:
        return f"{hint} (only {', '.join(took)} takes this plan; {why})"
    return f"{hint} (but {' and '.join(refused)} refuse{'s' if len(refused) == 1 else ''} this plan too: {why})"


__all__ = ["FORMATS", "SCHEMA", "LayerSplit", "export_plan", "layer_split"]
