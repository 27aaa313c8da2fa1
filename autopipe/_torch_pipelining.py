"""The one module that imports private torch names (a torch upgrade breaks only this file)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed.pipelining as pipelining
from torch._subclasses.fake_tensor import FakeTensorMode

__all__ = ["FakeTensorMode", "schedule_class", "torch_compute_order"]

# [Note: which torch orders are real]
#
# torch's multi-stage schedules (ScheduleInterleaved1F1B, ScheduleInterleavedZeroBubble)
# are _PipelineScheduleRuntime subclasses: each rank executes exactly the actions of its
# `pipeline_order`, so that order is read from torch here. The single-stage schedules
# (Schedule1F1B, ScheduleGPipe) run a hand-written loop in `_step_microbatches`; their
# `pipeline_order` is only a picture (with idle slots), so for them this returns None
# and autopipe.schedule.actions mirrors the loop instead.

_TORCH_ORDERS = {
    "interleaved-1f1b": "ScheduleInterleaved1F1B",
    "zb-h1": "ScheduleInterleavedZeroBubble",
}
_COMPUTE = ("F", "B", "I", "W")


class _StandInStage:
    """Just enough of a PipelineStage for a schedule to compute its order."""

    def __init__(self, index: int, num_stages: int, ranks: int) -> None:
        self.stage_index = index
        self.num_stages = num_stages
        self.group_size = ranks
        self.group_rank = 0
        self.is_first = index == 0
        self.is_last = index == num_stages - 1
        self.submod = torch.nn.Module()
        self.stage_index_to_group_rank: dict[int, int] = {}


def schedule_class(name: str) -> type[Any] | None:
    """The ``torch.distributed.pipelining`` schedule class called ``name``; None if this torch lacks it."""
    cls = getattr(pipelining, name, None)
    return cls if isinstance(cls, type) else None


def torch_compute_order(schedule: str, num_ranks: int, microbatches: int,
                        virtual_stages: int) -> list[list[tuple[int, str, int]]] | None:
    """Per rank, the ``(stage, kind, micro-batch)`` compute actions torch runs, in order.

    ``kind`` is ``F``, ``B`` (full backward), ``I`` (input gradients) or ``W`` (weight
    gradients). None where torch's order is not the one it runs (see the note above) or
    this torch lacks the schedule.
    """
    cls = schedule_class(_TORCH_ORDERS.get(schedule, ""))
    if cls is None:
        return None
    num_stages = num_ranks * virtual_stages
    stages = [_StandInStage(k * num_ranks, num_stages, num_ranks) for k in range(virtual_stages)]
    try:
        order = cls(stages, microbatches).pipeline_order
    except Exception:  # a torch whose constructor needs more of a stage: fall back to the mirror
        return None
    out: list[list[tuple[int, str, int]]] = []
    for r in range(num_ranks):
        actions = []
        for a in order.get(r, ()):
            if a is None or a.computation_type.value not in _COMPUTE:
                continue
            actions.append((int(a.stage_index), str(a.computation_type.value), int(a.microbatch_index)))
        out.append(actions)
    return out
