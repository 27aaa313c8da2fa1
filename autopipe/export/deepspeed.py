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

``activation_checkpoint_interval`` (a ``PipelineModule`` argument) recomputes what the plan
does (``autopipe.export.recompute``). A plan that shards its optimizer states over its
replicas (``--shard-optimizer``) adds ``zero_optimization: {"stage": 1}`` for the DeepSpeed
config (ZeRO-1, which its pipeline engine runs). A ``PipelineModule`` runs one stage per
rank: plans with several (interleaved 1F1B, ZBV, DualPipeV) are refused.
"""

from __future__ import annotations

from typing import Any

from autopipe.errors import ExportError
from autopipe.export import empty, recompute
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
    out: dict[str, Any] = {"num_stages": plan.num_stages, "parts": parts, "layers": layers,
                           "activation_checkpoint_interval": 1 if split.recompute_units else 0}
    if sharded(plan):  # [Note: sharded optimizer states in an export]
        out["zero_optimization"] = {"stage": 1}
    out["notes"] = [*recompute.notes(split, "DeepSpeed (activation_checkpoint_interval 1)",
                                     split.layers_per_stage(), outside=True),
                    *empty.notes(plan, "DeepSpeed builds each rank's optimizer over its stage's layers")]
    return out
