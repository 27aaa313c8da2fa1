"""Lower bounds on any partition's step, before (and besides) the MIP: what a search skips by.

    simple_bound   all work spread perfectly over the ranks; one micro-batch's path
    path_bound     the schedule's own paths (fill, drain, chunks) over per-stage shares
    step_bound     the larger of the two: what a plan's gap starts from, and what a
                   search compares with the best step found so far ([Note: a search's bound])
"""

from __future__ import annotations

import math

from autopipe.partition.problem import Problem
from autopipe.partition.timeline import seed_paths, splits_backward
from autopipe.partition.windows import path_bound


def simple_bound(problem: Problem) -> float:
    """A lower bound on any partition's step: all work spread perfectly.

    The first micro-batch's forward and backward path through every stage takes at
    least its work on the path / (fastest speed): all of W, except the weight
    gradients where the schedule splits them off (zero bubble: they wait off the
    path). The busiest rank runs m micro-batches of at least W / Σ speeds of the ranks
    each (with virtual stages a rank's chunks share its device: its speed counts once).
    """
    cfg = problem.config
    speeds = [d.speed for d in cfg.devices[:cfg.num_ranks]]  # chunk c < ranks runs on rank c
    work = math.fsum(b.work_s for b in problem.blocks)
    path = work
    if splits_backward(cfg.schedule):
        path -= math.fsum(b.backward_weight_s for b in problem.blocks)
    return max(path / max(speeds), cfg.microbatches * work / sum(speeds))


def step_bound(problem: Problem) -> float:
    """The larger of ``simple_bound`` and ``path_bound`` over the schedule's seed paths
    (``timeline.seed_paths``): a lower bound on the step of every partition of ``problem``."""
    cfg = problem.config
    seeds = seed_paths(cfg.schedule, cfg.num_stages, cfg.microbatches, cfg.virtual_stages)
    return max(simple_bound(problem), path_bound(problem, seeds))


# [Note: a search's bound]
#
# ``--schedule auto`` / ``--microbatches auto`` plan many candidates; a candidate whose
# lower bound is at least the best step found so far cannot win, so its MIP is skipped
# (and the search records that, with the bound). ``simple_bound`` alone is weak: it has no
# bubble (for 1F1B with p = 4, m = 8 it is 17% under the path bound: at best stage s
# holds (1 − 1/m)^s of stage 0's work, and the step is at least W / (1 − (1 − 1/m)^p),
# W one micro-batch's work, against m·W / p), and before it summed the speeds of every
# chunk, half the truth with 2 chunks per rank. ``path_bound`` solves the stage-window
# LP (p variables, a row per seed path) for its least step: on GPT-2 medium (H100
# estimate, 4 ranks, batch 64) it is 1.216 s for 1F1B at m = 32 against 1.160 s, and
# 1.179 s for interleaved 1F1B at m = 16 against 1.134 s (0.567 s counting chunks), in
# milliseconds.
