"""A simulated step as a Chrome/Perfetto trace (JSON Trace Event Format), one track per stage."""

from __future__ import annotations

import os
from typing import Any

from autopipe._jsonio import write_json_atomic
from autopipe.schedule.actions import rank_stages
from autopipe.schedule.simulate import SimResult

SCHEMA = "autopipe.trace/1"
"""Recorded under ``otherData``; the file itself is a plain Chrome trace."""

PIPELINE_PID = 0
LINKS_PID = 1
_CATEGORY = {"F": "forward", "B": "backward", "W": "weight-grad", "O": "optimizer"}


def _us(seconds: float) -> float:
    return round(seconds * 1e6, 3)


def _track_name(result: SimResult, rank: int) -> str:
    if result.virtual_stages == 1:
        return f"stage {rank}"
    stages = ", ".join(map(str, rank_stages(result.schedule, rank, result.num_ranks, result.virtual_stages)))
    return f"rank {rank} (stages {stages})"


def _meta(pid: int, tid: int | None, name: str, value: str | int) -> dict[str, Any]:
    event: dict[str, Any] = {"ph": "M", "pid": pid, "name": name, "args": {}}
    if tid is not None:
        event["tid"] = tid
    event["args"]["name" if isinstance(value, str) else "sort_index"] = value
    return event


def chrome_trace(result: SimResult) -> dict[str, Any]:
    """The trace object: compute on one track per stage (rank), sends on one track per link.

    Times are microseconds from the start of the step (the format's unit).
    """
    events: list[dict[str, Any]] = [
        _meta(PIPELINE_PID, None, "process_name", f"pipeline ({result.schedule}, simulated)"),
        _meta(PIPELINE_PID, None, "process_sort_index", 0),
    ]
    for r in range(result.num_ranks):
        events.append(_meta(PIPELINE_PID, r, "thread_name", _track_name(result, r)))
        events.append(_meta(PIPELINE_PID, r, "thread_sort_index", r))
    for e in result.events:
        events.append({
            "ph": "X", "pid": PIPELINE_PID, "tid": e.rank,
            "name": f"optimizer {e.stage}" if e.kind == "O" else f"{e.kind}{e.microbatch}",
            "cat": _CATEGORY[e.kind], "ts": _us(e.start), "dur": _us(e.end - e.start),
            "args": {"stage": e.stage, "microbatch": e.microbatch},
        })
    links = sorted({(min(x.src_stage, x.dst_stage), x.kind) for x in result.transfers if x.end > x.start})
    if links:
        events.append(_meta(LINKS_PID, None, "process_name", "links (simulated sends)"))
        events.append(_meta(LINKS_PID, None, "process_sort_index", 1))
    tids = {link: i for i, link in enumerate(links)}
    for (low, kind), tid in tids.items():
        arrow = f"{low} → {low + 1}" if kind == "F" else f"{low + 1} → {low}"
        what = "activations" if kind == "F" else "gradients"
        events.append(_meta(LINKS_PID, tid, "thread_name", f"{what} {arrow}"))
        events.append(_meta(LINKS_PID, tid, "thread_sort_index", tid))
    for x in result.transfers:
        if x.end <= x.start:
            continue
        events.append({
            "ph": "X", "pid": LINKS_PID, "tid": tids[min(x.src_stage, x.dst_stage), x.kind],
            "name": f"send {x.kind}{x.microbatch}", "cat": "send", "ts": _us(x.start),
            "dur": _us(x.end - x.start),
            "args": {"from_stage": x.src_stage, "to_stage": x.dst_stage, "microbatch": x.microbatch},
        })
    return {
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {
            "schema": SCHEMA, "schedule": result.schedule, "microbatches": result.microbatches,
            "iteration_s": result.iteration_s, "bubble_fraction": result.bubble_fraction,
        },
    }


def write_chrome_trace(result: SimResult, path: str | os.PathLike[str]) -> None:
    """Write ``chrome_trace(result)`` atomically; open it in chrome://tracing or ui.perfetto.dev."""
    write_json_atomic(path, chrome_trace(result))
