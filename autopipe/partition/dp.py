"""Exact dynamic programs over the topological chain of blocks.

The chain DP only cuts the block order into contiguous segments (a subset of the
convex partitions the ILP searches):

    blocks  b0 b1 b2 | b3 b4 | b5 b6 b7 b8 | b9
    stage       0       1          2        3

``min_bottleneck`` is exact for the busiest resource — a stage's compute or a link's
transfer per micro-batch (min–max) — under the memory limits; among partitions with
that bottleneck it then takes the most even one (least sum of squares). It is a fast heuristic for the step time
(the ILP's objective), and the ILP's starting point. ``min_memory`` is exact for the largest memory-to-limit ratio (used to
explain infeasible problems). Both run in O(p·n²) numpy work.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from autopipe.partition.chain import Chain, FloatArray

Score = Callable[[int, int, range], FloatArray]


def _minmax(chain: Chain, score: Score, *, cap: float | None = None, fits: bool = True,
            weight: Score | None = None) -> tuple[float, list[int]] | None:
    """Min over chain partitions of max_s score (or, with ``cap``, min Σ weight s.t. each
    score ≤ cap; ``weight`` defaults to the score).

    Returns the value and the segment ends, or None when no partition is valid.
    """
    p = chain.problem.config.num_stages
    n = chain.n
    inf = np.inf
    best = np.full((p, n + 1), inf)
    arg = np.full((p, n + 1), -1, dtype=np.int64)
    for s in range(p):
        ends = [n] if s == p - 1 else range(1, n + 1)
        for i in ends:
            j = chain.starts(s, i)
            if len(j) == 0:
                continue
            ok = chain.fitting(s, i) if fits else chain.valid(s, i, j)
            if not ok.any():
                continue
            t = score(s, i, j)
            prev = np.zeros(len(j)) if s == 0 else best[s - 1, j.start:j.stop]
            if cap is None:
                total = np.maximum(prev, t)
            else:
                total = prev + (t if weight is None else weight(s, i, j))
                ok &= t <= cap
            total = np.where(ok, total, inf)
            k = int(np.argmin(total))
            if total[k] < inf:
                best[s, i] = total[k]
                arg[s, i] = j.start + k
    if not np.isfinite(best[p - 1, n]):
        return None
    cuts = [n]
    for s in range(p - 1, 0, -1):
        cuts.append(int(arg[s, cuts[-1]]))
    return float(best[p - 1, n]), cuts[::-1]


def min_bottleneck(chain: Chain) -> list[int] | None:
    """Block → stage of the chain partition with the smallest slowest-stage time that fits
    in memory, or None if none fits.

    Among the partitions with that bottleneck it takes the one with the smallest sum of
    squared stage times: the most even one (when one layer dominates, e.g. a vocabulary
    head, the other stages would otherwise be split arbitrarily, some nearly empty).
    """
    times: dict[tuple[int, int], FloatArray] = {}  # both passes ask each (s, i)

    def time(s: int, i: int, j: range) -> FloatArray:
        if (s, i) not in times:
            times[(s, i)] = chain.time(s, i, j)
        return times[(s, i)]

    found = _minmax(chain, time)
    if found is None:
        return None
    cap = found[0] * (1 + 1e-12)

    def squared(s: int, i: int, j: range) -> FloatArray:
        t = time(s, i, j)
        out: FloatArray = t * t
        return out

    refined = _minmax(chain, time, cap=cap, weight=squared)
    cuts = refined[1] if refined is not None else found[1]
    return chain.stage_of(cuts)


def min_memory(chain: Chain, *, balanced: bool = False) -> tuple[float, list[int]] | None:
    """The chain partition with the smallest max_s memory_s / limit_s, ignoring the limits.

    Returns (that ratio, block → stage), or None when the chain has no valid partition
    (fewer blocks than stages, or pins and non-tensor values leave no cut). ``balanced``:
    among the partitions with that ratio, the one with the least sum of squared ratios, as
    ``min_bottleneck`` does for time (a second pass; without it the stages other than the
    largest are split arbitrarily, and an infeasible plan's message listed them so: a
    Qwen2-MoE's "most memory-balanced split" read 57 GiB beside 116).
    """
    limits = [lim if np.isfinite(lim) else 1.0 for lim in chain.limit]
    ratios: dict[tuple[int, int], FloatArray] = {}  # both passes ask each (s, i)

    def ratio(s: int, i: int, j: range) -> FloatArray:
        if (s, i) not in ratios:
            ratios[(s, i)] = chain.memory(s, i, j) / limits[s]
        return ratios[(s, i)]

    found = _minmax(chain, ratio, fits=False)
    if found is None:
        return None
    if balanced:
        def squared(s: int, i: int, j: range) -> FloatArray:
            r = ratio(s, i, j)
            out: FloatArray = r * r
            return out

        refined = _minmax(chain, ratio, cap=found[0] * (1 + 1e-12), fits=False, weight=squared)
        if refined is not None:
            return found[0], chain.stage_of(refined[1])
    return found[0], chain.stage_of(found[1])
