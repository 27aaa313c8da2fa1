"""Pictures of a plan (matplotlib, the ``plot`` extra): per-stage bars and the pipeline timeline.

Layout of the PNG::

    ┌──────────────────────────┬──────────────────────────┐
    │ time per micro-batch     │ memory per stage         │
    │ F | B | W | comm bars,   │ params | grads | optim | │
    │ this plan's and the      │ activations | workspace  │
    │ baselines' bottleneck    │ | buffers | batch |      │
    │                          │ library, limits          │
    ├──────────────────────────┴──────────────────────────┤
    │ timeline: one row per stage, a block per F/B/W       │
    │ of each micro-batch; white is bubble                 │
    └─────────────────────────────────────────────────────┘
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from autopipe._jsonio import atomic_output
from autopipe._units import format_seconds, format_size
from autopipe.errors import PlanError
from autopipe.schedule.simulate import SimResult, simulate_plan

if TYPE_CHECKING:
    from autopipe.plan_format import Plan

COLOURS = {"F": "#4c72b0", "B": "#dd8452", "W": "#8172b3", "O": "#55a868", "comm": "#937860"}
MEMORY_PARTS = (("params", "#4c72b0"), ("grads", "#55a868"), ("optimizer", "#c44e52"),
                ("activations", "#dd8452"), ("workspace", "#da8bc3"), ("buffers", "#937860"),
                ("batch", "#8c8c8c"), ("library", "#ccb974"))
BASELINE_STYLES = ("--", ":", "-.")
LIMIT_HEADROOM = 4.0
"""A device limit more than this many times the largest bar is written, not drawn."""


def _figure(width: float, height: float) -> Any:
    """A matplotlib Figure on the Agg canvas (no pyplot, no global backend state)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlanError("drawing a plan needs matplotlib, which is not installed",
                        hint="pip install 'autopipe[plot]', or use `autopipe show` without --png") from None
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _size_scale(largest: float) -> tuple[float, str]:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if largest >= scale:
            return float(scale), unit
    return 1.0, "B"


def _time_scale(largest: float) -> tuple[float, str]:
    if largest >= 1:
        return 1.0, "s"
    if largest >= 1e-3:
        return 1e-3, "ms"
    return 1e-6, "µs"


def _legend_above_bars(ax: Any) -> None:
    """Make head-room above the tallest bar or line and put the legend there."""
    ax.set_ylim(0, ax.get_ylim()[1] * 1.5)
    ax.legend(fontsize=7, loc="upper left", ncols=2)


def draw_stage_times(ax: Any, plan: Plan) -> None:
    """Stacked per-micro-batch F, B, W and communication time per stage, bottlenecks marked."""
    stages = plan.stages
    x = list(range(len(stages)))
    split = plan.schedule == "zb-h1"
    parts = [("forward", "F", [s.forward_s for s in stages])]
    if split:
        parts.append(("backward (input)", "B", [s.backward_s - s.backward_weight_s for s in stages]))
        parts.append(("backward (weight)", "W", [s.backward_weight_s for s in stages]))
    else:
        parts.append(("backward", "B", [s.backward_s for s in stages]))
    parts.append(("communication", "comm", [s.comm_s for s in stages]))
    totals = [s.time_s for s in stages]
    marks = [b.bottleneck_s for b in plan.baselines.values() if b.bottleneck_s is not None]
    scale, unit = _time_scale(max([*totals, *marks, 1e-12]))
    bottom = [0.0] * len(stages)
    for label, key, values in parts:
        scaled = [v / scale for v in values]
        ax.bar(x, scaled, bottom=bottom, color=COLOURS[key], label=label, width=0.7)
        bottom = [b + v for b, v in zip(bottom, scaled)]
    worst = max(range(len(stages)), key=lambda i: totals[i])
    ax.axhline(totals[worst] / scale, color="black", linewidth=1.2,
               label=f"bottleneck: stage {worst} ({format_seconds(totals[worst])})")
    for style, (name, base) in zip(BASELINE_STYLES * 4, sorted(plan.baselines.items())):
        if base.bottleneck_s is None:
            continue
        where = f"stage {base.bottleneck_stage}" if base.bottleneck_stage is not None else "bottleneck"
        ax.axhline(base.bottleneck_s / scale, color="#c44e52", linestyle=style, linewidth=1.2,
                   label=f"{name} split's {where} ({format_seconds(base.bottleneck_s)})")
    ax.set_xticks(x)
    ax.set_xlabel("stage")
    ax.set_ylabel(f"time per micro-batch ({unit})")
    ax.set_title("compute and communication per stage")
    _legend_above_bars(ax)


def draw_stage_memory(ax: Any, plan: Plan) -> None:
    """Stacked memory per stage against each stage's device limit; baselines' worst stage marked."""
    stages = plan.stages
    x = list(range(len(stages)))
    limits: dict[str, int] = {d.name: d.memory for d in plan.devices}
    stage_limit = [limits.get(s.device, plan.devices[s.index].memory if s.index < len(plan.devices) else 0)
                   for s in stages]
    totals = [s.memory.total for s in stages]
    marks = [b.max_memory for b in plan.baselines.values() if b.max_memory is not None]
    used = max([*totals, *marks, 1])
    # limits far above every bar would flatten the bars: then they are named, not drawn
    drawn = [limit if 0 < limit <= LIMIT_HEADROOM * used else 0 for limit in stage_limit]
    scale, unit = _size_scale(max([used, *drawn]))
    bottom = [0.0] * len(stages)
    for part, colour in MEMORY_PARTS:
        values = [getattr(s.memory, part) / scale for s in stages]
        ax.bar(x, values, bottom=bottom, color=colour, label=part, width=0.7)
        bottom = [b + v for b, v in zip(bottom, values)]
    labelled = False
    for i, limit in enumerate(drawn):
        if limit > 0:
            ax.hlines(limit / scale, i - 0.45, i + 0.45, color="black", linewidth=2.0,
                      label=None if labelled else "device limit")
            labelled = True
        if 0 < stage_limit[i] < totals[i]:
            ax.annotate("over", (i, totals[i] / scale), ha="center", va="bottom", color="#c44e52")
        elif stage_limit[i] > 0 and not limit:
            ax.annotate(f"limit {format_size(stage_limit[i])}\n({totals[i] / stage_limit[i]:.0%} used)",
                        (i, totals[i] / scale), ha="center", va="bottom", fontsize=7)
    for style, (name, base) in zip(BASELINE_STYLES * 4, sorted(plan.baselines.items())):
        if base.max_memory is not None:
            ax.axhline(base.max_memory / scale, color="#c44e52", linestyle=style, linewidth=1.2,
                       label=f"{name} split's largest stage ({format_size(base.max_memory)})")
    ax.set_xticks(x)
    ax.set_xlabel("stage")
    ax.set_ylabel(f"peak memory ({unit})")
    ax.set_title("memory per stage vs device limit")
    _legend_above_bars(ax)


def draw_timeline(ax: Any, result: SimResult, plan: Plan | None = None) -> None:
    """One row per rank, a block per forward/backward/weight action; gaps are bubbles."""
    scale, unit = _time_scale(max(result.iteration_s, 1e-12))
    label_blocks = len(result.events) <= 600
    for kind, name in (("F", "forward"), ("B", "backward"), ("W", "weight grads"), ("O", "optimizer")):
        mine = [e for e in result.events if e.kind == kind]
        if not mine:
            continue
        for rank in range(result.num_ranks):
            bars = [(e.start / scale, (e.end - e.start) / scale) for e in mine if e.rank == rank]
            ax.broken_barh(bars, (rank - 0.4, 0.8), facecolors=COLOURS[kind], edgecolor="white",
                           linewidth=0.5, label=name if rank == 0 else None)
        if label_blocks and kind != "O":
            for e in mine:
                if (e.end - e.start) / result.iteration_s > 0.012:
                    ax.text((e.start + e.end) / 2 / scale, e.rank, str(e.microbatch), ha="center",
                            va="center", fontsize=6, color="white")
    if plan is not None:
        for style, (name, base) in zip(BASELINE_STYLES * 4, sorted(plan.baselines.items())):
            if base.iteration_s is not None:
                ax.axvline(base.iteration_s / scale, color="#c44e52", linestyle=style, linewidth=1.2,
                           label=f"{name} split's step ({format_seconds(base.iteration_s)})")
    ax.set_yticks(range(result.num_ranks))
    ax.set_yticklabels([f"stage {r}" if result.virtual_stages == 1 else f"rank {r}"
                        for r in range(result.num_ranks)])
    ax.invert_yaxis()
    ax.set_xlim(left=0)
    ax.set_xlabel(f"time ({unit})")
    ax.set_title(f"{result.schedule}, {result.microbatches} micro-batches: simulated step "
                 f"{format_seconds(result.iteration_s)}, bubble {result.bubble_fraction:.1%}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0))


def render_plan(plan: Plan, path: str | os.PathLike[str], *, result: SimResult | None = None) -> None:
    """Draw the plan's per-stage bars and its simulated timeline to a PNG.

    Args:
        plan: the plan.
        path: where to write the PNG (written atomically).
        result: the simulated step; simulated from the plan when omitted.

    Raises:
        PlanError: matplotlib is missing, or the plan cannot be simulated.
    """
    result = result if result is not None else simulate_plan(plan)
    rows = max(4, result.num_ranks)
    fig = _figure(13.0, 4.0 + 0.4 * rows)
    grid = fig.add_gridspec(2, 2, height_ratios=[4.0, 0.4 * rows])
    draw_stage_times(fig.add_subplot(grid[0, 0]), plan)
    draw_stage_memory(fig.add_subplot(grid[0, 1]), plan)
    draw_timeline(fig.add_subplot(grid[1, :]), result, plan)
    _save_png(fig, path)


def _save_png(fig: Any, path: str | os.PathLike[str]) -> None:
    """Save via a temp file and ``os.replace`` so a failed draw never leaves half a PNG
    (``atomic_output``, which also gives it the mode a plain write would: a PNG was
    private, 0600, until 2026-12-06)."""
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")
