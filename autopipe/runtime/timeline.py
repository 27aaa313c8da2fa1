"""``autopipe train --timeline FILE``: every rank's actions, timed as they ran, next to the plan's.

[Note: a measured timeline]
A plan's prediction is a step; when a run measures another, the question is where the
time went. With ``--timeline`` each rank records, every step, the start and end of each
of its compute actions (``F``, ``B``, or ``I`` and ``W`` when the backward is split), the
loss (``L``), the schedule's posting of sends and receives (``post``) and its waiting on
them (``wait``), the tied-gradient sum (``sync``) and the optimizer step (``O``), with
``time.perf_counter`` (the host's monotonic clock, one clock for the ranks of one
machine). At the end the ranks gather their records; the last stage's rank writes one
Chrome trace (open it in ui.perfetto.dev or chrome://tracing) holding the plan's simulated
step, the run's median step and every step, and prints per stage the median of each
action against the simulated one, and per rank what a step spent posting and waiting.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from autopipe._jsonio import write_json_atomic
from autopipe._torch_pipelining import actions_timed
from autopipe.plan_format import Plan
from autopipe.schedule.chrome_trace import chrome_trace
from autopipe.schedule.simulate import SimResult, simulate_plan

_CATEGORY = {"F": "forward", "B": "backward", "I": "input-grad", "W": "weight-grad", "L": "loss",
             "O": "optimizer", "sync": "tied-sync", "post": "post", "wait": "wait"}
MEASURED_PID = 2
"""The trace's process for the run's median step (0 and 1: the simulated step and its sends)."""
STEPS_PID = 3
"""The trace's process for every step of the run."""


@dataclass(frozen=True, slots=True)
class Action:
    """One timed action of one rank."""

    step: int
    kind: str
    stage: int
    """Plan stage index; −1 for a rank's posting, waiting, sync and optimizer step."""
    microbatch: int
    start: float
    end: float


@dataclass
class ActionLog:
    """This rank's timed actions (``Pipe.timed`` records into it)."""

    rank: int
    step: int = 0
    """The step now running (``Pipe.step`` counts from 1)."""
    actions: list[Action] = field(default_factory=list)
    settle: Callable[[], None] | None = None
    """Called before an action's end is read: on CUDA ``torch.cuda.synchronize``, so that an
    action's time holds the kernels it queued (the run pays those waits while timed)."""

    def record(self, kind: str, stage: int, microbatch: int, start: float, end: float) -> None:
        """Keep one action of the current step."""
        self.actions.append(Action(self.step, kind, stage, microbatch, start, end))

    @contextlib.contextmanager
    def span(self, kind: str) -> Iterator[None]:
        """Time what runs inside as one action of this rank (``O``, ``sync``)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.settle is not None:
                self.settle()
            self.record(kind, -1, -1, t0, time.perf_counter())

    def timing(self, stages: list[Any], schedule: Any) -> contextlib.AbstractContextManager[None]:
        """Inside this, the schedule's actions on ``stages`` are recorded."""
        return actions_timed(stages, schedule, self.record, self.settle)


def timeline_trace(plan: Plan, ranks: dict[int, list[Action]], simulated: SimResult | None = None) -> dict[str, Any]:
    """The Chrome trace: the plan's simulated step (processes 0 and 1, ``chrome_trace``),
    the run's median step after the first, each rank's actions from its start, and every
    step from the first one's start (microseconds)."""
    sim = simulated if simulated is not None else simulate_plan(plan)
    out = chrome_trace(sim)
    events: list[dict[str, Any]] = out["traceEvents"]
    steps = _steps(ranks)
    median = _median_step(steps)
    events += [_meta(MEASURED_PID, "process_name", f"measured: step {median} (the median after the first)"),
               _meta(MEASURED_PID, "process_sort_index", MEASURED_PID),
               _meta(STEPS_PID, "process_name", "measured: every step"),
               _meta(STEPS_PID, "process_sort_index", STEPS_PID)]
    first = min((a.start for acts in ranks.values() for a in acts), default=0.0)
    for rank, acts in sorted(ranks.items()):
        for pid in (MEASURED_PID, STEPS_PID):
            events.append({**_meta(pid, "thread_name", f"rank {rank}"), "tid": rank})
            events.append({**_meta(pid, "thread_sort_index", rank), "tid": rank})
        for a in acts:
            if a.step == median:
                events.append(_event(a, MEASURED_PID, rank, steps[median][0]))
            events.append(_event(a, STEPS_PID, rank, first))
    out["otherData"]["measured"] = {
        "median_step": median,
        "step_s": {str(s): end - start for s, (start, end) in sorted(steps.items())},
    }
    return out


def write_trace(path: str | os.PathLike[str], plan: Plan, ranks: dict[int, list[Action]]) -> None:
    """Write ``timeline_trace`` atomically."""
    write_json_atomic(path, timeline_trace(plan, ranks))


def compare(plan: Plan, ranks: dict[int, list[Action]], positions: dict[int, int],
            simulated: SimResult | None = None, device: str | None = None) -> list[str]:
    """Per stage, each action's median duration after the first step against the simulated
    one (a last stage's ``L`` counted with its ``F``, as the plan counts the loss; a split
    backward's ``I`` against the simulated ``B``); per rank, what a step spent posting,
    waiting, and summing tied gradients and stepping its optimizer, in median, the last
    against the simulated ``O`` (which holds both and the runtime's per-step work; the sum
    is a collective, so a rank that ends its backwards early waits in it: ``positions``,
    each rank's place in its pipeline, the simulated rank). ``device``: the kind this run
    trained on (``cpu``, ``cuda``); the header says where the plan priced another."""
    sim = simulated if simulated is not None else simulate_plan(plan)
    planned: dict[tuple[int, str], list[float]] = defaultdict(list)
    optimizer: dict[int, float] = defaultdict(float)
    for e in sim.events:
        planned[e.stage, e.kind].append(e.end - e.start)
        if e.kind == "O":
            optimizer[e.rank] += e.end - e.start
    measured: dict[tuple[int, str], list[float]] = defaultdict(list)
    per_step: dict[tuple[int, str], dict[int, float]] = defaultdict(lambda: defaultdict(float))
    for rank, acts in ranks.items():
        loss = {(a.step, a.stage, a.microbatch): a.end - a.start for a in acts if a.kind == "L"}
        for a in acts:
            if a.step < 2:
                continue
            if a.stage >= 0 and a.kind != "L":
                extra = loss.get((a.step, a.stage, a.microbatch), 0.0) if a.kind == "F" else 0.0
                measured[a.stage, a.kind].append(a.end - a.start + extra)
            elif a.stage < 0:
                per_step[rank, a.kind][a.step] += a.end - a.start
    if not measured:
        return ["timeline: no step after the first to compare"]
    # a plan estimated for an H100 and trained on CPUs: its numbers are not this device's
    where = str(plan.options.get("profile_device", ""))
    other = f", for {where.removeprefix('estimate:')}, not this {device}" if (
        device is not None and where and where.split(":")[0] != device) else ""
    lines = [f"timeline, median after the first step, measured (plan's simulated step{other}):"]
    for s in range(plan.num_stages):
        parts = []
        for kind in ("F", "B", "I", "W"):
            got = measured.get((s, kind))
            want = planned.get((s, "B" if kind == "I" else kind))  # the simulator's B: input gradients where W is apart
            if got:
                parts.append(f"{kind} {_ms(statistics.median(got))}"
                             + (f" ({_ms(statistics.median(want))})" if want else ""))
        lines.append(f"  stage {s}: " + ", ".join(parts) + " per micro-batch")
    for rank in sorted(ranks):
        parts = [f"{kind} {_ms(statistics.median(per_step[rank, kind].values()))}"
                 for kind in ("post", "wait") if per_step.get((rank, kind))]
        # the simulator's O: the tied sum, the optimizer step and the runtime's per-step work
        after = [per_step[rank, "sync"].get(k, 0.0) + per_step[rank, "O"].get(k, 0.0)
                 for k in set(per_step.get((rank, "sync"), {})) | set(per_step.get((rank, "O"), {}))]
        if after:
            stepped = optimizer.get(positions.get(rank, rank))
            parts.append(f"sync + O {_ms(statistics.median(after))}" + (f" ({_ms(stepped)})" if stepped else ""))
        if parts:
            lines.append(f"  rank {rank}: " + ", ".join(parts) + " a step")
    return lines


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def _steps(ranks: dict[int, list[Action]]) -> dict[int, tuple[float, float]]:
    """Each step's span over every rank: its first action's start, its last one's end."""
    span: dict[int, tuple[float, float]] = {}
    for acts in ranks.values():
        for a in acts:
            lo, hi = span.get(a.step, (a.start, a.end))
            span[a.step] = (min(lo, a.start), max(hi, a.end))
    return span


def _median_step(steps: dict[int, tuple[float, float]]) -> int:
    """The step of median length after the first (the first where there is no other)."""
    later = sorted((end - start, s) for s, (start, end) in steps.items() if s >= 2)
    if not later:
        return min(steps, default=1)
    return later[(len(later) - 1) // 2][1]


def _meta(pid: int, name: str, value: str | int) -> dict[str, Any]:
    return {"ph": "M", "pid": pid, "name": name,
            "args": {"name" if isinstance(value, str) else "sort_index": value}}


def _event(a: Action, pid: int, rank: int, zero: float) -> dict[str, Any]:
    name = (f"{a.kind}{a.microbatch}" if a.stage >= 0 else a.kind) + (f" (step {a.step})" if pid == STEPS_PID else "")
    return {"ph": "X", "pid": pid, "tid": rank, "name": name, "cat": _CATEGORY.get(a.kind, a.kind),
            "ts": round((a.start - zero) * 1e6, 3), "dur": round((a.end - a.start) * 1e6, 3),
            "args": {"stage": a.stage, "microbatch": a.microbatch, "step": a.step}}


def gathered(log: ActionLog, gather: Callable[[Any], list[Any]]) -> dict[int, list[Action]]:
    """Every rank's actions (``gather``: an all-gather of one object per rank)."""
    return dict(gather((log.rank, log.actions)))
