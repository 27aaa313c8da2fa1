"""The finalists of a measured search re-timed as whole stages, and the fastest of them.

[Note: finalists re-timed]
A measured search compares its candidates on their node sums, which on the CPU run
10–40% under the same nodes run as stage modules (on a GPU 0.6× to 2×), and not by the
same share for every candidate: a stage of many small nodes gains more by running as one
module than one of a few big ones, and each micro-batch size has its own ratios. So the
finalists (the ``limit`` fastest on node sums, those within ``REFINE_WITHIN`` of the
fastest) are each re-timed as whole stages and re-solved
(``autopipe.refine.refine_candidate``), and the fastest re-timed step wins, ties to the
node sums' order. Its stages are then timed once more for its prediction, as refine does
for the fastest of its own noisy rounds: the least of a few noisy timings reads low.
Until 2026-12-07 only the node sums' winner was re-timed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from autopipe.partition.mip_time import MipTime, share_for_finalists
from autopipe.plan_format import Plan

DEFAULT_FINALISTS = 3
"""Finalists at most: a degree search's ``--finalists`` default, a batch-size search's limit."""
REFINE_WITHIN = 1.5
"""Finalists re-timed: those whose node-sum step is within this factor of the fastest."""


def finalists(steps: Sequence[float], limit: int) -> list[int]:
    """Of candidates ranked by their node-sum ``steps`` (fastest first), the indices to re-time."""
    return [i for i, s in enumerate(steps[:max(1, limit)]) if s <= REFINE_WITHIN * steps[0]]


def refined_best(plans: Sequence[Plan], refine: Callable[[int, Plan], Plan],
                 mip: MipTime | None = None) -> tuple[int, list[Plan], Plan | None]:
    """``plans`` (finalists in node-sum order) each refined (``refine(k, plan)`` for the
    ``k``-th): the index of the fastest refined (ties to the earlier), every refined plan,
    and the winner timed again (``refine`` of its refined plan) where it was chosen among
    several refined ones, else None. ``mip``: the MIP time their re-solves share
    ([Note: time kept for the re-solves] in ``autopipe.partition.mip_time``)."""
    refined = []
    for k, p in enumerate(plans):
        share_for_finalists(mip, len(plans), k)
        refined.append(refine(k, p))
    best = min(range(len(plans)), key=lambda k: (refined[k].predicted.iteration_s, k))
    again = None
    if len(plans) > 1 and refined[best] is not plans[best]:
        share_for_finalists(mip, len(plans), len(plans), again=True)
        again = refine(best, refined[best])
    return best, refined, again


def mark_rows(rows: Sequence[dict[str, Any]], starts: Sequence[Plan], done: Sequence[Plan], best: int,
              again: Plan | None) -> Plan:
    """Record in the finalists' search ``rows`` their re-timed steps (``refined_s``, where
    refining gave another plan than ``starts``) and the winner's second timing
    (``retimed_s``); the plan kept: the winner timed again, else the winner refined."""
    for row, start, plan in zip(rows, starts, done):
        if plan is not start:
            row["refined_s"] = plan.predicted.iteration_s
    if again is not None:
        rows[best]["retimed_s"] = again.predicted.iteration_s
    return again or done[best]

