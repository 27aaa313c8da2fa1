"""torchtitan: the module FQNs of each model part (``parallelism.module_fqns_per_model_part``).

torchtitan's ``pipeline_module_split`` deep-copies the whole model per stage and
keeps only the modules its part lists (``_split_module``): a part is
``["tok_embeddings", "layers.0", …]`` for the first stage, ``[…, "norm", "output"]``
for the last. The names here are the model's own module paths, as autopipe traced
them (``model.embed_tokens``, ``model.layers.0``, …, ``lm_head`` for a Hugging Face
Llama); torchtitan's ``_split_module`` walks one level of nesting, so a model whose
layers sit deeper needs names relative to the module it splits (its Hugging Face
backend maps ``model.layers`` to ``layers``). A part also lists the modules outside its
layers whose parameters its layers read ([Note: parameters held outside the units] in
``autopipe.partition.layers``: DeBERTa's ``encoder.rel_embeddings``, read by every layer),
each in every part that reads it.

``pipeline_parallel_degree`` is the plan's pipeline ranks, not its stages: torchtitan puts a
rank's model parts where the plan does (``autopipe.export.placement``; interleaved plans in
a loop, ZBV and DualPipeV in a V). A plan with data-parallel replicas adds
``data_parallel_replicate_degree`` (whole replicas, as autopipe planned their memory; no
sharding; a plan that shards its optimizer states, ZeRO-1, says in a note what torchtitan,
which has no ZeRO-1, does instead). ``activation_checkpoint`` names the policy (torchtitan's ``full`` or ``none``
subcommand; ``[activation_checkpoint] mode`` in older versions) that recomputes what the
plan does (``autopipe.export.recompute``).
"""

from __future__ import annotations

from typing import Any

from autopipe._units import format_size
from autopipe.errors import ExportError
from autopipe.export import empty, recompute
from autopipe.export.params import recorded
from autopipe.export.placement import V_SCHEDULES, check_placement, sharded
from autopipe.export.split import LayerSplit
from autopipe.plan_format import Plan

SCHEDULES = {"1f1b": "1F1B", "gpipe": "GPipe", "zb-h1": "InterleavedZeroBubble",
             "interleaved-1f1b": "Interleaved1F1B", "looped-bfs": "LoopedBFS",
             "zbv": "ZBVZeroBubble", "dualpipev": "DualPipeV"}
"""autopipe's schedule names → torch.distributed.pipelining's (which torchtitan takes)."""


def export(plan: Plan, split: LayerSplit) -> dict[str, Any]:
    """The fields of torchtitan's ``ParallelismConfig`` that carry the plan.

    Raises:
        ExportError: the plan places its stages on ranks otherwise than torchtitan would.
    """
    parts, notes, reads = [], [], recorded(plan)
    for stage in range(plan.num_stages):  # [Note: a holder that encloses layers]
        own = split.stage_modules(stage)
        dropped = []
        for holder, other, under in split.swallowing(stage):
            if not reads or not any(m.startswith(holder + ".") for m in own):
                more = ", …" if len(under) > 2 else ""
                why = ("the plan does not record which parameters its stages read" if not reads
                       else f"part {stage} lists no module inside it that would keep them")
                raise ExportError(
                    f"stage {stage} holds a parameter set directly on {holder}, which encloses "
                    f"modules of stage {other} ({', '.join(under[:2])}{more}); torchtitan's part "
                    f"for stage {stage} would keep {holder} whole, and those with it ({why})",
                    hint=f"hold that parameter in a submodule of {holder} that encloses no layer, "
                         + ("plan it again with this version of autopipe, " if not reads else "")
                         + "or export it --format deepspeed, whose layer list names each stage's own modules")
            dropped.append(holder)
        parts.append(own + [h for h in split.stage_holders(stage) if h not in dropped])
        if dropped:
            notes.append(f"stage {stage} reads parameters set directly on {', '.join(dropped)}, which "
                         f"{'encloses' if len(dropped) == 1 else 'enclose'} other stages' layers: "
                         f"torchtitan's split keeps them in part {stage} with the modules it lists "
                         f"inside, without listing {'it' if len(dropped) == 1 else 'them'}")
    style = "v" if plan.schedule in V_SCHEDULES else "loop"
    ranks = check_placement(plan, style, "torchtitan", "plan it again for this schedule")
    parallelism: dict[str, Any] = {
        "pipeline_parallel_degree": ranks,
        "module_fqns_per_model_part": parts,
        "pipeline_parallel_schedule": SCHEDULES.get(plan.schedule, plan.schedule),
        "num_pp_microbatches": plan.microbatches,
    }
    if plan.replicas > 1:
        parallelism.update(data_parallel_replicate_degree=plan.replicas, data_parallel_shard_degree=1)
    notes += recompute.notes(split, "torchtitan (activation_checkpoint full)", split.layers_per_stage())
    notes += empty.notes(plan, "torchtitan builds an optimizer per model part")
    if sharded(plan):  # [Note: sharded optimizer states in an export]
        extra = max(s.memory.optimizer for s in plan.stages) * (plan.replicas - 1)
        notes.append(f"the plan shards the optimizer states over its {plan.replicas} replicas "
                     f"(--shard-optimizer, ZeRO-1), which torchtitan has no setting for: with "
                     f"data_parallel_replicate_degree {plan.replicas} each replica holds all of "
                     f"them, up to {format_size(extra)} a rank more than planned; "
                     f"data_parallel_shard_degree {plan.replicas} (FSDP) shards the parameters "
                     f"and gradients too, at a cost in communication the plan did not price")
    return {"parallelism": parallelism, "activation_checkpoint": "full" if split.recompute_units else "none",
            "notes": notes}

