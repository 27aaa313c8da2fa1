"""A compact text grid of a simulated step, for terminals (no matplotlib needed).

One row per rank, one column per slice of time. A block starts with its
kind and micro-batch and is filled with the kind in lower case; ``.`` is
idle::

    stage 0 |F0F1F2F3B0bF4B1bF5B2b..B3b..B4b..B5b|  27% idle
    stage 1 |..F0F1F2B0bF3B1bF4B2bF5B3b..B4b..B5b..|  27% idle
"""

from __future__ import annotations

from autopipe._units import format_seconds
from autopipe.schedule.actions import rank_stages
from autopipe.schedule.simulate import SimResult

IDLE = "."


def _row_labels(result: SimResult) -> list[str]:
    if result.virtual_stages == 1:
        return [f"stage {r}" for r in range(result.num_ranks)]
    return [f"rank {r} (stages {', '.join(map(str, rank_stages(result.schedule, r, result.num_ranks, result.virtual_stages)))})"
            for r in range(result.num_ranks)]


def timeline_rows(result: SimResult, width: int) -> list[str]:
    """Each rank's row of ``width`` characters."""
    rows = [[IDLE] * width for _ in range(result.num_ranks)]
    if result.iteration_s <= 0:
        return ["".join(r) for r in rows]
    scale = width / result.iteration_s
    for e in result.events:
        row = rows[e.rank]
        first = min(width - 1, round(e.start * scale))
        last = min(width, round(e.end * scale))
        if last <= first:
            # shorter than a column: show it only where nothing else is drawn
            if row[first] != IDLE or e.end <= e.start:
                continue
            last = first + 1
        label = e.kind if e.kind == "O" else f"{e.kind}{e.microbatch}"
        for i in range(first, last):
            row[i] = label[i - first] if i - first < len(label) else e.kind.lower()
    return ["".join(r) for r in rows]


def text_timeline(result: SimResult, *, width: int = 96) -> str:
    """The step as a text grid, with a header and each rank's idle share.

    Args:
        result: a simulated step.
        width: columns for the time axis.
    """
    width = max(8, width)
    labels = _row_labels(result)
    pad = max(len(x) for x in labels)
    lines = [
        f"{result.schedule}, {result.microbatches} micro-batches: simulated step "
        f"{format_seconds(result.iteration_s)}, bubble {result.bubble_fraction:.1%} "
        f"(1 column = {format_seconds(result.iteration_s / width)})"]
    for label, row, idle in zip(labels, timeline_rows(result, width), result.stage_bubble):
        lines.append(f"{label:<{pad}} |{row}| {idle:5.1%} idle")
    present = {e.kind for e in result.events}
    kinds = "F forward, B backward" + (" (input grads), W weight grads" if "W" in present else "") \
        + (", O optimizer step" if "O" in present else "")
    lines.append(f"{'':<{pad}}  {kinds}; digits: micro-batch; {IDLE} idle")
    return "\n".join(lines)
