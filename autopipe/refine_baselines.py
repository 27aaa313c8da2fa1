"""A refinement that did not settle, timed beside its baselines: the fastest measured is kept.

See [Note: a faster baseline timed]; ``autopipe.refine.refine`` calls ``beside_baselines``
after its last round.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from autopipe.errors import AutopipeError
from autopipe.plan_format import Baseline, DataParallel, Plan
from autopipe.refine import _cuts, ranks_of, with_stage_times

BASELINE_METHODS = ("dp", "uniform", "params")
"""The baselines a plan can be planned by alone (``plan_profile``'s ``method``)."""


def baselines_to_time(plan: Plan) -> list[str]:
    """Where one of ``plan``'s baselines is priced faster than its predicted step, the names
    of all those with a priced step (that fit), fastest first, ties in the plan's order;
    else none."""
    step = plan.predicted.iteration_s
    priced = sorted((b.iteration_s, k, name) for k, (name, b) in enumerate(plan.baselines.items())
                    if b.iteration_s is not None)
    return [name for _, _, name in priced] if priced and priced[0][0] < step else []


def measured_entries(baselines: dict[str, Baseline], timed: dict[str, Plan]) -> dict[str, Baseline]:
    """``baselines`` with each entry named in ``timed`` at the figures of its plan there, that
    baseline's plan at its stages' measured times. Memory (a model, not measured) and node
    counts stay as priced."""
    def entry(b: Baseline, plan: Plan) -> Baseline:
        times = [s.time_s for s in plan.stages]
        worst = times.index(max(times))
        return dataclasses.replace(b, iteration_s=plan.predicted.iteration_s, bottleneck_stage=worst,
                                   bottleneck_s=times[worst])

    return {k: entry(b, timed[k]) if k in timed else b for k, b in baselines.items()}


# [Note: a faster baseline timed]
#
# A refinement that did not settle keeps its fastest measured round, timed once more, and
# takes its baselines from the solve on that round's measurement: they are priced, not
# measured. On a busy host the timings drift between rounds by more than the baselines'
# margins: a user's Gemma 2 plan (2026-12-07, --stages 2 --microbatches 2) was re-timed at
# 29.092 ms beside "dp 24.931 ms (-14.3%)" and "uniform 25.307 ms", and until then only a
# line in ``autopipe show`` said so. Now, where the caller can plan by a baseline's method
# (``baseline_plan``: ``autopipe plan`` and ``autopipe.plan`` for one plan, and for each
# finalist of a batch-size or a degree search, planned alone at its own micro-batch size and
# degrees), where a baseline is priced under the kept plan's re-timed step,
# every baseline is planned on that round's measured costs (the same options, and the
# kept cuts' ranks, micro-batches, schedule and chunks: a ``--schedule auto`` search is not
# run again; recomputation where its method's plan needs it to fit, chunks where the
# schedule has them: it is a plan like any other) and timed as whole
# stages by the same routine, on the same conditions, with the same loss. All of them, not
# only those priced under the first re-timing: the timings after it drift too, and one
# priced a little over it may be priced under the step finally kept (in one run on the
# MLP example, 2026-12-07, that timed only those, the plan read 6.677 ms beside "uniform
# 6.518 ms", never timed). A baseline is passed over, with why (``baseline_skipped``),
# where it cannot be planned (it does not fit, too few layers)
# or is planned for another schedule, ranks or devices; one with the cuts of the kept plan
# or of a baseline already taken (uniform and params often cut alike) is not timed again
# but takes that plan's measured step (``same_cuts_as``: the kept cuts' priced step may
# sit under their re-timed one by the drift alone).
#
# The plans are timed back to back in a palindrome, A B C C B A (A: the kept cuts, whose
# first timing is the one just taken), so every plan's two timings sit around the same
# middle and a drift that is linear over them weighs on all alike; each is priced at the
# mean of its two timings (stage by stage, simulated), and the fastest is kept, the kept
# cuts on a tie. (Timing each baseline alone after the kept plan would charge a slowing
# host to the baseline.) It costs two more timings per baseline and one for the kept
# cuts, each at least ``window_s``: seven at most, for three baselines.
#
# ``options["refine"]`` records ``baseline_timed`` (per baseline: its priced step, both
# timings and their mean, or ``same_cuts_as``), ``baseline_against`` (the kept cuts'
# timings and mean) and ``baseline_kept`` (the baseline whose split the plan is, None
# where the kept cuts stay). Each measured baseline's entry in ``baselines`` carries its
# measured step (memory and node counts as priced); where one is kept, the plan's stages,
# prediction and options are that baseline's plan at its measured times, its solver block
# the solve that was asked for (``--method``; so ``check --spec`` re-plans the same way),
# accounted on that step, and its own entry reads +0.0%: the plan is that split. A plan
# that converged, a ``--no-refine`` plan, and one with no baseline priced faster are as
# before: nothing more is timed.


def beside_baselines(kept: Plan, best: Plan, first: Plan, timed: Callable[[Plan], Plan],
                      build: Callable[[str], Plan]) -> tuple[Plan, dict[str, Any], dict[str, Plan]]:
    """[Note: a faster baseline timed]: of ``kept`` (the refined plan at ``first``, the timing
    of the cuts ``best`` just taken) and, where one is priced under it, the baselines that
    can be planned (``build(method)``), the one that measures fastest back to back
    (``timed``), at its measured times; what ``options["refine"]`` records; each baseline
    measured, at its measured times (none: the plan is ``first``)."""
    skipped: dict[str, str] = {}
    rivals: dict[str, Plan] = {}
    same: dict[str, str] = {}  # a baseline of the same cuts as the kept plan's or another's
    for name in baselines_to_time(kept):
        if name not in BASELINE_METHODS:  # the layer restriction's "unrestricted" split
            skipped[name] = f"no method of its own (the methods: {', '.join(BASELINE_METHODS)})"
            continue
        try:
            other = build(name)
        except AutopipeError as e:
            skipped[name] = e.message
            continue
        if (other.schedule, other.microbatches, ranks_of(other), other.devices, _replicas(other)) != (
                best.schedule, best.microbatches, ranks_of(best), best.devices, _replicas(best)):
            skipped[name] = "planned with another schedule, micro-batches, ranks or devices"
            continue
        twins = [n for n, p in {"kept": best, **rivals}.items() if _cuts(p) == _cuts(other)]
        if twins:
            same[name] = twins[0]
        else:
            rivals[name] = other
    said = {"baseline_skipped": skipped} if skipped else {}
    if not rivals and not same:
        return first, said, {}
    runs: dict[str, list[Plan]] = {name: [timed(p)] for name, p in rivals.items()}
    for name in reversed(rivals):  # A B C C B A
        runs[name].append(timed(rivals[name]))
    ours = [first, timed(best)] if rivals else [first]
    mine = _mean_timed(*ours) if rivals else first
    theirs = {name: _mean_timed(*r) for name, r in runs.items()}
    won = min(theirs, key=lambda n: theirs[n].predicted.iteration_s, default=None)
    if won is not None and not theirs[won].predicted.iteration_s < mine.predicted.iteration_s:
        won = None
    info: dict[str, Any] = {name: {"priced_s": kept.baselines[name].iteration_s,
                                   "step_s": theirs[name].predicted.iteration_s,
                                   "steps_s": [p.predicted.iteration_s for p in runs[name]]} for name in rivals}
    for name, twin in same.items():
        theirs[name] = mine if twin == "kept" else theirs[twin]
        info[name] = {"priced_s": kept.baselines[name].iteration_s, "step_s": theirs[name].predicted.iteration_s,
                      "same_cuts_as": twin}
    return (mine if won is None else theirs[won]), {
        "baseline_timed": info, "baseline_against": {
            "step_s": mine.predicted.iteration_s, "steps_s": [p.predicted.iteration_s for p in ours]},
        "baseline_kept": won, **said}, theirs


def _replicas(plan: Plan) -> DataParallel | None:
    """``plan``'s replicas, but for the seconds of their sync (those follow the cuts)."""
    dp = plan.data_parallel
    return None if dp is None else dataclasses.replace(dp, allreduce_s=())


def _mean_timed(a: Plan, b: Plan) -> Plan:
    """``a`` at the mean of its stages' times and ``b``'s (two timings of the same plan)."""
    return with_stage_times(a, [(x.forward_s + y.forward_s) / 2 for x, y in zip(a.stages, b.stages)],
                            [(x.backward_s + y.backward_s) / 2 for x, y in zip(a.stages, b.stages)])
