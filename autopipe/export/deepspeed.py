"""DeepSpeed: ``PipelineModule`` layer boundaries (its ``parts``).

DeepSpeed's ``PipelineModule(layers=[…])`` runs a flat list of layers; stage i
holds ``layers[parts[i]:parts[i+1]]`` (``_partition_layers``, which sets
``self.parts`` from ``partition_method``: ``uniform``, ``parameters`` or
``type:REGEX``). No method takes explicit boundaries, so the export gives the list
autopipe assumes — one entry per unit: what runs before the first layer, each
layer (as often as the model runs it, in the order the runs come: ALBERT's one shared layer
group once per hidden layer, the same module in each entry), what runs after the last — and
``parts`` over it; a subclass sets them:

    class PlannedPipe(PipelineModule):
        def _partition_layers(self, method="parameters"):
            self.parts = PARTS
            stage = self._topo.get_coord(self.global_rank).pipe
            self._set_bounds(start=self.parts[stage], stop=self.parts[stage + 1])

``holders`` lists per stage the modules outside its layers whose parameters they read ([Note:
holders in DeepSpeed's layers]). ``activation_checkpoint_interval`` (a ``PipelineModule`` argument) recomputes what the plan
does (``autopipe.export.recompute``). A plan that shards its optimizer states over its
replicas (``--shard-optimizer``) adds ``zero_optimization: {"stage": 1}`` for the DeepSpeed
config (ZeRO-1, which its pipeline engine runs). A ``PipelineModule`` runs one stage per
rank: plans with several (interleaved 1F1B, ZBV, DualPipeV) are refused.
"""

from __future__ import annotations

from typing import Any

from autopipe.errors import ExportError
from autopipe.export import empty, recompute
from autopipe.export._words import indices
from autopipe.export.placement import pipeline_ranks, sharded
from autopipe.export.split import LayerSplit
from autopipe.plan_format import Plan


def export(plan: Plan, split: LayerSplit) -> dict[str, Any]:
    """``layers`` (each entry: the modules of one ``PipelineModule`` layer) and ``parts``.

    Raises:
        ExportError: the plan runs several stages on a rank.
    """
    ranks = pipeline_ranks(plan)
    if ranks != plan.num_stages:
        raise ExportError(f"DeepSpeed's PipelineModule runs one stage per rank, but this plan "
                          f"({plan.schedule}) runs {plan.num_stages} stages on {ranks} ranks",
                          hint="plan it again with --schedule 1f1b (or gpipe), or export it --format torchtitan")
    layers: list[list[str]] = []
    parts = [0]
    for stage in range(plan.num_stages):
        # a unit that owns no module (the inputs alone, the output alone) is no layer; a layer
        # the model runs k times is k entries, in the order the runs come ([Note: a layer run
        # several times] in autopipe.partition.layers)
        layers += [list(split.units[u]) for u in split.stage_runs(stage) if split.units[u]]
        parts.append(len(layers))
    # a holder that encloses layers would bring them along: named in a note instead
    every = [m for u in split.units for m in u]
    enclosing = {h for s in range(plan.num_stages) for h in split.stage_holders(s)
                 if any(m.startswith(h + ".") for m in every)}
    holders = [[h for h in split.stage_holders(s) if h not in enclosing] for s in range(plan.num_stages)]
    out: dict[str, Any] = {"num_stages": plan.num_stages, "parts": parts, "layers": layers,
                           "holders": holders,
                           "activation_checkpoint_interval": 1 if split.recompute_units else 0}
    if sharded(plan):  # [Note: sharded optimizer states in an export]
        out["zero_optimization"] = {"stage": 1}
    out["notes"] = [*recompute.notes(split, "DeepSpeed (activation_checkpoint_interval 1)",
                                     split.layers_per_stage(), outside=True),
                    *_holder_notes(holders),
                    *_enclosing_notes(split, enclosing),
                    *empty.notes(plan, "DeepSpeed builds each rank's optimizer over its stage's layers")]
    return out


def _holder_notes(holders: list[list[str]]) -> list[str]:
    """A note per module that holds parameters a stage's layers read but lies in none of them.

    [Note: holders in DeepSpeed's layers]
    A stage's layers can read a parameter held outside them: DeBERTa's every layer reads
    ``encoder.rel_embeddings`` (a module never called), Data2Vec-Vision's the shared
    ``relative_position_bias``. torchtitan's parts list such modules (the layer record's
    ``holders``); DeepSpeed's layer list named none until 2026-12-07, so a ``PipelineModule``
    built from it lacked them. The export lists them per stage (``holders``) and says how a
    stage gets them: built into its layers, as one ``TiedLayerSpec`` where several stages read
    them (or their copies train apart). A holder that encloses layers (BLIP-2's ``query_tokens``
    is set on ``model`` itself, LayoutLMv3's ``cls_token`` on ``layoutlmv3``) is no module a
    stage can take: it is left out of ``holders``, and a note says to hold the parameter in a
    module of the stage's layers (torchtitan's split keeps it with the modules its part lists
    inside the holder: [Note: a holder that encloses layers] in ``autopipe.export.split``).
    """
    readers: dict[str, list[int]] = {}
    for stage, modules in enumerate(holders):
        for module in modules:
            readers.setdefault(module, []).append(stage)
    out = []
    for module, stages in readers.items():
        out.append(f"the layers of {indices('stage', stages)} read parameters of {module}, which lies in none of "
                   f"DeepSpeed's layers (holders): build it into "
                   + ("that stage's layers" if len(stages) == 1
                      else "those stages' layers with one TiedLayerSpec, or their copies train apart"))
    return out


def _enclosing_notes(split: LayerSplit, enclosing: set[str]) -> list[str]:
    """A note per holder that encloses layers ([Note: holders in DeepSpeed's layers])."""
    out = []
    for holder in sorted(enclosing):
        stages = [s for s in range(len(split.stage_units)) if holder in split.stage_holders(s)]
        out.append(f"{indices('stage', stages)} read{'s' * (len(stages) == 1)} a parameter set directly on {holder}, "
                   f"which encloses layers, so no DeepSpeed layer can hold it without them: hold "
                   f"that parameter in a module of {'that stage' if len(stages) == 1 else 'each'}'s "
                   f"layers (tied with TiedLayerSpec where several read it), or it is not trained")
    return out
