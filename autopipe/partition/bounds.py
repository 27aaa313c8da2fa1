"""Lower bounds on any partition's step, before (and besides) the MIP: what a search skips by.

    simple_bound   all work spread perfectly over the ranks (the optimizer steps and the
                   runtime's per-action overheads with it); one micro-batch's path
    path_bound     the schedule's own paths (fill, drain, chunks) over per-stage shares
    step_bound     the larger of the two: what a plan's gap starts from, and what a
                   search compares with the best step found so far ([Note: a search's bound])

Both count what every partition pays ([Note: what every partition pays]).
"""

from __future__ import annotations

import math
from dataclasses import replace

from autopipe.partition.problem import Problem
from autopipe.partition.timeline import seed_paths, splits_backward
from autopipe.partition.windows import path_bound


def simple_bound(problem: Problem) -> float:
    """A lower bound on any partition's step: all work spread perfectly.

    The first micro-batch's forward and backward path through every stage takes at
    least its work on the path / (fastest speed): all of W, except the weight
    gradients where the schedule splits them off (zero bubble: they wait off the
    path). The ranks run m micro-batches of W in all, and every parameter's optimizer
    step once, so the busiest runs at least (m·W + O) / Σ speeds of the ranks (with
    virtual stages a rank's chunks share its device: its speed counts once), plus its
    stages' m forward and m backward overheads each ([Note: what every partition pays]).
    """
    problem = paid(problem)
    cfg = problem.config
    speeds = [d.speed for d in cfg.devices[:cfg.num_ranks]]  # chunk c < ranks runs on rank c
    work = math.fsum(b.work_s for b in problem.blocks)
    path = work
    if splits_backward(cfg.schedule):
        path -= math.fsum(b.backward_weight_s for b in problem.blocks)
    each = cfg.forward_overhead_s + cfg.backward_overhead_s  # per stage and micro-batch
    per_tensor, per_byte = cfg.optimizer_step
    params = {q for b in problem.blocks for q in b.params}
    steps = len(params) * per_tensor + math.fsum(problem.param_bytes.get(q, 0) for q in params) * per_byte
    chunks = cfg.num_stages // cfg.num_ranks
    return max(path / max(speeds) + cfg.num_stages * each,
               (cfg.microbatches * work + steps) / sum(speeds) + cfg.microbatches * chunks * each)


def step_bound(problem: Problem) -> float:
    """The larger of ``simple_bound`` and ``path_bound`` over the schedule's seed paths
    (``timeline.seed_paths``), plus the runtime's per-step overhead: a lower bound on the
    step of every partition of ``problem`` (``Evaluation.objective_s``)."""
    cfg = problem.config
    seeds = seed_paths(cfg.schedule, cfg.num_stages, cfg.microbatches, cfg.virtual_stages)
    return max(simple_bound(problem), path_bound(paid(problem), seeds)) + cfg.step_overhead_s


def paid(problem: Problem) -> Problem:
    """``problem`` with the recomputation every partition of it pays in its blocks' backward
    ([Note: what every partition pays])."""
    cfg = problem.config
    if cfg.recompute != "full":
        return problem
    again = set(problem.recompute_candidates())
    passes = 2 if splits_backward(cfg.schedule) else 1  # [Note: recomputation in a split backward]
    return replace(problem, blocks=tuple(
        replace(b, backward_input_s=b.backward_input_s + b.forward_s,
                backward_weight_s=b.backward_weight_s + (passes - 1) * b.forward_s) if i in again else b
        for i, b in enumerate(problem.blocks)))


# [Note: what every partition pays]
#
# A bound of the blocks' work alone is weak where much of the step is other work: at the
# Qwen2-57B-A14B shape on 16 H100s with ``--recompute full`` (32 micro-batches, Adam) the
# plan's step was 748.9 ms, its gap 44% over a 420.4 ms bound, though each stage also
# recomputes about 4.3 ms of forward per micro-batch and steps Adam for about 45 ms. What
# every partition pays, as ``evaluate`` charges it:
# - under ``full``, every candidate's forward again in its backward (and again in the
#   weight pass of a split backward): ``paid``, seen by both bounds;
# - every parameter's optimizer step, once at least (a tied one in each holder), on the
#   rank that holds it: in the busiest rank's share;
# - the runtime's overheads: each stage's forward and backward per micro-batch, on its
#   rank and on one micro-batch's path, and the step's own, after the schedule.
# Under ``auto`` or ``none`` recomputation is a choice, and the bound leaves it out.
#
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
