"""Which rank runs each of a plan's stages, in the terms the engines take.

A plan of ``n`` stages on ``P`` pipeline ranks (``n = V·P``: ``V`` virtual stages per rank
for interleaved 1F1B, ZBV and DualPipeV) places its stages as its schedule does: stage
``s`` on rank ``s mod P`` (``loop``: interleaved 1F1B), or ``s`` on rank ``s`` and
``2P−1−s`` (``v``: ZBV, DualPipeV). The engines count ranks, not stages: torchtitan's
``pipeline_parallel_degree`` and Megatron-LM's ``--pipeline-model-parallel-size`` are
``P``, and each places a rank's stages by a fixed rule (torchtitan: ``v`` for its ZBV and
DualPipeV schedules, ``loop`` for the others, ``stage_ids_this_rank``; Megatron-LM: layout
stage ``v·P + r`` on rank ``r``, ``PipelineParallelLayerLayout``), so an export checks that
the plan's placement is that rule before it hands the stages over.
"""

from __future__ import annotations

from autopipe.errors import ExportError
from autopipe.plan_format import Plan

V_SCHEDULES = frozenset({"zbv", "dualpipev"})
"""Schedules whose stages go down the ranks and back up (two per rank)."""


def stage_ranks(plan: Plan) -> list[int]:
    """The pipeline rank of each stage (a stage without one runs on the rank of its index)."""
    return [s.index if s.rank is None else s.rank for s in plan.stages]


def pipeline_ranks(plan: Plan) -> int:
    """``P``: the ranks one pipeline runs on (each data-parallel replica has its own ``P``)."""
    return len(set(stage_ranks(plan)))


def placed(style: str, stage: int, ranks: int) -> int:
    """The rank of ``stage`` under ``style`` (``loop`` or ``v``) on ``ranks`` ranks."""
    if style == "loop" or stage < ranks:
        return stage % ranks
    return 2 * ranks - 1 - stage


def check_placement(plan: Plan, style: str, engine: str, hint: str) -> int:
    """``P``, after checking that the plan places its stages by ``style``.

    Raises:
        ExportError: the plan places a stage elsewhere (``engine``, ``hint`` in the message).
    """
    ranks, p = stage_ranks(plan), pipeline_ranks(plan)
    expected = [placed(style, s, p) for s in range(plan.num_stages)]
    if ranks != expected:
        rule = ("stage s on rank s mod P" if style == "loop"
                else "stages s < P on rank s and the others back up, on rank 2P-1-s (a V)")
        raise ExportError(f"{engine} puts {rule}: ranks {expected} for these "
                          f"{plan.num_stages} stages, but the plan ({plan.schedule}) puts them on {ranks}",
                          hint=hint)
    return p


def sharded(plan: Plan) -> bool:
    """Whether ``plan`` shards its optimizer states over data-parallel replicas (ZeRO-1).

    # [Note: sharded optimizer states in an export]
    A ``--shard-optimizer`` plan priced each replica's share of the optimizer states, not
    all of them: an export without the engine's ZeRO-1 setting runs a plan that needs more
    memory than it was given (and until 2026-12-07 every export left it out). Megatron-LM
    gets ``--use-distributed-optimizer``, DeepSpeed ``zero_optimization.stage`` 1 (which its
    pipeline engine runs); torchtitan has no ZeRO-1, and a note says what it does instead.
    """
    dp = plan.data_parallel
    return dp is not None and dp.shard_optimizer and dp.degree > 1
