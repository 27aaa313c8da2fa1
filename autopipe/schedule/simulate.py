"""Time-accurate simulation of one pipeline step from per-stage costs.

Each rank runs its program (autopipe.schedule.actions) in order; an action
starts when the rank is free *and* its input has arrived::

    F(s, k)  needs  F(s-1, k) finished + the send over boundary s-1
    B(s, k)  needs  B(s+1, k) finished + the send back over boundary s
                    (the last stage: its own F(s, k))
    W(s, k)  needs  B(s, k)

Sends run on a link per boundary and direction, one at a time, overlapped
with compute (torch posts them as asynchronous isend/irecv), from when their
action ends (DualPipeV's overlapped pairs: when the pair ends, ``send_after``;
[Note: DualPipeV] in autopipe/schedule/dualpipev.py). Activations of
micro-batch k on stage s are held from the start of F(s, k) to the end of its
last backward action (B, or W when the schedule splits it off). A rank's
optimizer steps (``optimizer_s``) run after its last action; the step ends
when every rank is done.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from autopipe.errors import PlanError
from autopipe.schedule.actions import ScheduleOrder, schedule_order

if TYPE_CHECKING:
    from autopipe.plan_format import Plan
    from autopipe.schedule.runtime_costs import ModelCosts, RuntimeCosts


@dataclass(frozen=True, slots=True, kw_only=True)
class StageCost:
    """What one stage costs per micro-batch."""

    forward_s: float
    """Forward time."""
    backward_input_s: float
    """Backward time for the input gradients."""
    backward_weight_s: float
    """Backward time for the weight gradients (a separate W action only in zero-bubble schedules)."""
    send_s: float = 0.0
    """Time to send this stage's output to the next stage (and, back, its gradient, unless
    ``return_s`` says otherwise)."""
    activation_bytes: int = 0
    """Bytes saved for backward per micro-batch in flight."""
    optimizer_s: float = 0.0
    """Once per step: the optimizer step on this stage's parameters, after its last backward."""
    return_s: float | None = None
    """Time to send the gradient of this stage's output back to it from the next stage
    (None: ``send_s``; less where a value goes forward only)."""

    def __post_init__(self) -> None:
        for name in ("forward_s", "backward_input_s", "backward_weight_s", "send_s", "optimizer_s",
                     "return_s"):
            value = getattr(self, name)
            if value is None:
                continue
            if not math.isfinite(value) or value < 0:
                raise PlanError(f"stage cost {name} is {value}",
                                hint="times must be finite and non-negative seconds")
        if self.activation_bytes < 0:
            raise PlanError(f"stage cost activation_bytes is {self.activation_bytes}",
                            hint="sizes must be non-negative bytes")

    @property
    def backward_s(self) -> float:
        """Full backward time (input + weight gradients)."""
        return self.backward_input_s + self.backward_weight_s


@dataclass(frozen=True, slots=True)
class Event:
    """One compute action as it ran in the simulation."""

    stage: int
    kind: str
    """``F``, ``B`` (input gradients only in zero-bubble schedules), ``W``, or ``O`` (the
    optimizer step, once per stage, micro-batch 0; only where ``optimizer_s`` > 0)."""
    microbatch: int
    start: float
    end: float
    rank: int
    """Rank that ran it (equals ``stage`` without virtual stages)."""


@dataclass(frozen=True, slots=True)
class Transfer:
    """One send between neighbouring stages."""

    src_stage: int
    dst_stage: int
    kind: str
    """``F`` (activations, forward) or ``B`` (gradients, backward)."""
    microbatch: int
    start: float
    end: float


@dataclass(frozen=True, slots=True, kw_only=True)
class SimResult:
    """The simulated step. Per-stage tuples are per rank (device) when stages are virtual."""

    iteration_s: float
    """Time from the first action's start to the last action's end."""
    bubble_fraction: float
    """Idle fraction over all ranks: idle / (ranks × iteration)."""
    stage_bubble: tuple[float, ...]
    """Idle fraction per rank."""
    peak_inflight: tuple[int, ...]
    """Most micro-batches whose activations a rank holds at once (summed over its stages)."""
    peak_activation_bytes: tuple[int, ...]
    """Most activation bytes a rank holds at once."""
    events: tuple[Event, ...]
    """Every compute action, by rank then start time."""
    transfers: tuple[Transfer, ...] = ()
    schedule: str = "1f1b"
    microbatches: int = 1
    num_ranks: int = 1
    virtual_stages: int = 1
    stage_peak_inflight: tuple[int, ...] = ()
    """Most micro-batches in flight per model stage (equals ``peak_inflight`` without virtual stages)."""
    busy_s: tuple[float, ...] = ()
    """Compute time per rank."""


def simulate(stages: Sequence[StageCost], *, schedule: str = "1f1b", microbatches: int,
             virtual_stages: int = 1) -> SimResult:
    """Simulate one step of ``schedule`` over ``stages``.

    Args:
        stages: costs of the model stages in pipeline order; with virtual
            stages, ``len(stages) = ranks × virtual_stages`` and stage ``s``
            runs on rank ``s % ranks``.
        schedule: one of ``autopipe.schedule.SCHEDULES``.
        microbatches: micro-batches per step.
        virtual_stages: model stages per rank (interleaved schedules).

    Returns:
        The step's time, bubbles, peak activation memory and every event.

    Raises:
        PlanError: unknown schedule (the message lists the known ones), no
            stages, or a stage count not divisible by ``virtual_stages``.
    """
    if not stages:
        raise PlanError("nothing to simulate: no stages", hint="pass at least one StageCost")
    if virtual_stages < 1 or len(stages) % virtual_stages:
        raise PlanError(f"{len(stages)} stages cannot be spread as {virtual_stages} virtual stages per rank",
                        hint="pass ranks × virtual_stages stage costs")
    order = schedule_order(schedule, len(stages) // virtual_stages, microbatches, virtual_stages)
    return _run(order, stages)


def _run(order: ScheduleOrder, stages: Sequence[StageCost]) -> SimResult:
    """Play ``order`` against the costs: the event loop described in the module docstring."""
    p, m, n = order.num_ranks, order.microbatches, len(stages)
    split = order.split_backward
    duration = {
        "F": [c.forward_s for c in stages],
        "B": [c.backward_input_s if split else c.backward_s for c in stages],
        "W": [c.backward_weight_s for c in stages],
    }
    send = [c.send_s for c in stages]
    back = [c.send_s if c.return_s is None else c.return_s for c in stages]
    unset = -1.0
    end = {kind: [[unset] * m for _ in range(n)] for kind in ("F", "B", "W")}
    arrive_f = [[unset] * m for _ in range(n)]  # activations of k arrived at stage s
    arrive_b = [[unset] * m for _ in range(n)]  # gradient of k arrived at stage s
    link_f = [0.0] * n  # boundary s → s+1 free from
    link_b = [0.0] * n  # boundary s+1 → s free from
    free = [0.0] * p
    pointer = [0] * p
    posts = [order.posts(r) for r in range(p)]
    events: list[list[Event]] = [[] for _ in range(p)]
    transfers: list[Transfer] = []

    def post(action: tuple[int, str, int], ready: float) -> None:
        s, kind, k = action
        if kind == "F" and s < n - 1:
            t0 = max(ready, link_f[s])
            link_f[s] = arrive_f[s + 1][k] = t0 + send[s]
            transfers.append(Transfer(s, s + 1, "F", k, t0, t0 + send[s]))
        elif kind == "B" and s > 0:
            t0 = max(ready, link_b[s - 1])
            link_b[s - 1] = arrive_b[s - 1][k] = t0 + back[s - 1]
            transfers.append(Transfer(s, s - 1, "B", k, t0, t0 + back[s - 1]))

    remaining = sum(len(r) for r in order.ranks)
    while remaining:
        progressed = False
        for r in range(p):
            program = order.ranks[r]
            i = pointer[r]
            while i < len(program):
                s, kind, k = program[i]
                if kind == "F":
                    ready = arrive_f[s][k] if s > 0 else 0.0
                elif kind == "B":
                    ready = arrive_b[s][k] if s < n - 1 else end["F"][s][k]
                    if end["F"][s][k] < 0:
                        ready = unset
                else:
                    ready = end["B"][s][k]
                if ready < 0:
                    break
                start = max(free[r], ready)
                finish = start + duration[kind][s]
                free[r] = finish
                end[kind][s][k] = finish
                events[r].append(Event(s, kind, k, start, finish, r))
                for j in posts[r][i]:  # this action's send, or those it was posted after
                    post(program[j], finish)
                i += 1
                remaining -= 1
                progressed = True
            pointer[r] = i
        if not progressed:
            stuck = {r: order.ranks[r][pointer[r]] for r in range(p) if pointer[r] < len(order.ranks[r])}
            raise AssertionError(f"schedule {order.schedule} deadlocks; ranks wait at {stuck}")
    for s in range(n):
        if stages[s].optimizer_s > 0:
            r = order.rank_of(s)
            events[r].append(Event(s, "O", 0, free[r], free[r] + stages[s].optimizer_s, r))
            free[r] += stages[s].optimizer_s
    return _summarise(order, stages, events, transfers)


def _summarise(order: ScheduleOrder, stages: Sequence[StageCost], events: list[list[Event]],
               transfers: list[Transfer]) -> SimResult:
    """Bubbles and peak memory from the simulated events."""
    p = order.num_ranks
    iteration = max((e.end for rank in events for e in rank), default=0.0)
    busy = [sum(e.end - e.start for e in rank) for rank in events]
    bubble = [1.0 - b / iteration if iteration > 0 else 0.0 for b in busy]
    release = "W" if order.split_backward else "B"
    peak_count, peak_bytes = [0] * p, [0] * p
    stage_peak = [0] * len(stages)
    for r, rank in enumerate(events):
        # (time, +1 hold / −1 release, stage); releases sort first at equal times
        deltas = sorted([(e.start, 1, e.stage) for e in rank if e.kind == "F"]
                        + [(e.end, -1, e.stage) for e in rank if e.kind == release])
        count = held = 0
        per_stage: dict[int, int] = {}
        for _, delta, s in deltas:
            count += delta
            held += delta * stages[s].activation_bytes
            per_stage[s] = per_stage.get(s, 0) + delta
            peak_count[r] = max(peak_count[r], count)
            peak_bytes[r] = max(peak_bytes[r], held)
            stage_peak[s] = max(stage_peak[s], per_stage[s])
    idle = sum(iteration - b for b in busy)
    return SimResult(
        iteration_s=iteration,
        bubble_fraction=idle / (p * iteration) if iteration > 0 else 0.0,
        stage_bubble=tuple(bubble),
        peak_inflight=tuple(peak_count),
        peak_activation_bytes=tuple(peak_bytes),
        events=tuple(e for rank in events for e in rank),
        transfers=tuple(transfers),
        schedule=order.schedule,
        microbatches=order.microbatches,
        num_ranks=p,
        virtual_stages=order.virtual_stages,
        stage_peak_inflight=tuple(stage_peak),
        busy_s=tuple(busy),
    )


def simulate_plan(plan: Plan, *, runtime: RuntimeCosts | None = None,
                  model: ModelCosts | None = None) -> SimResult:
    """Simulate a plan's step with its schedule, micro-batches and stage times.

    Stage costs come from ``autopipe.schedule.plan_costs.plan_costs``: the
    profiled times, plus, where given, the runtime's overheads and the model's
    loss and optimizer step. The plan records each stage's saved activations
    for all its micro-batches in flight (``memory.activations``); the
    per-micro-batch size is that divided by the in-flight count the simulated
    schedule gives the stage.

    Raises:
        PlanError: see ``simulate`` and ``plan_costs``.
    """
    from autopipe.schedule.plan_costs import plan_costs  # it builds on this module

    costs, virtual = plan_costs(plan, runtime=runtime, model=model)
    first = simulate(costs, schedule=plan.schedule, microbatches=plan.microbatches,
                     virtual_stages=virtual)
    per_mb = [s.memory.activations // max(1, first.stage_peak_inflight[s.index])
              for s in plan.stages]
    if not any(per_mb):
        return first
    costs = [replace(c, activation_bytes=b) for c, b in zip(costs, per_mb)]
    return simulate(costs, schedule=plan.schedule, microbatches=plan.microbatches,
                    virtual_stages=virtual)
