"""Stage windows: the range of stages each block can take in any partition better than a known one.

[Note: stage windows]

With an incumbent partition of iteration time Z, any better partition has
Σ_s T_s + (m−1)·max_s T_s ≤ Z (GPipe's objective is at least that), and Σ_s T_s is at
least the total work W over the fastest device, so every stage time is at most

    Tcap = (Z − W / max speed) / (m − 1).

Block b and all its ancestors (work A_b) sit in stages 0 … stage(b), which can do at
most Tcap·Σ_{s ≤ stage(b)} speed_s of work, so stage(b) is at least the first k with
Tcap·Σ_{s≤k} speed_s ≥ A_b; symmetrically for its descendants (work D_b) and the last
stages. The windows are then made consistent along edges. On chain-like graphs they
leave each block two or three candidate stages, which fixes most ILP variables before
the solver starts, without cutting off any partition better than the incumbent.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from autopipe.partition.problem import Problem

BoolMatrix = npt.NDArray[np.bool_]


def ancestors(problem: Problem) -> BoolMatrix:
    """``anc[v, u]`` is True when u = v or u reaches v (blocks are in topological order)."""
    n = problem.size
    anc = np.zeros((n, n), dtype=np.bool_)
    preds: list[list[int]] = [[] for _ in range(n)]
    for u, v in problem.edges():
        preds[v].append(u)
    for v in range(n):
        anc[v, v] = True
        for u in preds[v]:
            anc[v] |= anc[u]
    return anc


def pinned_windows(problem: Problem) -> tuple[list[int], list[int]]:
    """Stage ranges ``[lo, hi]`` per block from pins alone."""
    p = problem.config.num_stages
    lo = [p - 1 if b.pin == "last" else 0 for b in problem.blocks]
    hi = [0 if b.pin == "first" else p - 1 for b in problem.blocks]
    return lo, hi


def windows(problem: Problem, anc: BoolMatrix, incumbent_s: float | None) -> tuple[list[int], list[int]]:
    """Per block, the lowest and highest stage of a partition no slower than ``incumbent_s``.

    See [Note: stage windows]. Without an incumbent, or with one micro-batch, only pins
    and edges narrow the windows.
    """
    cfg = problem.config
    p, m = cfg.num_stages, cfg.microbatches
    lo, hi = pinned_windows(problem)
    if incumbent_s is not None and m > 1 and p > 1:
        work = np.array([b.work_s for b in problem.blocks])
        speeds = [d.speed for d in cfg.devices]
        tcap = (incumbent_s * (1 + 1e-9) - work.sum() / max(speeds)) / (m - 1)
        tcap = max(tcap, 0.0) * (1 + 1e-9) + 1e-300
        above = anc @ work          # A_b: work of b and its ancestors
        below = anc.T @ work        # D_b: work of b and its descendants
        fill = np.cumsum(speeds) * tcap
        drain = np.cumsum(speeds[::-1])[::-1] * tcap
        slack = 1 - 1e-9
        for b in range(problem.size):
            k_lo = int(np.searchsorted(fill, above[b] * slack, side="left"))
            lo[b] = max(lo[b], min(k_lo, p - 1))
            feasible = [k for k in range(p) if drain[k] >= below[b] * slack]
            hi[b] = min(hi[b], feasible[-1] if feasible else 0)
    edges = problem.edges()
    for u, v in edges:               # sorted by u: forward pass
        lo[v] = max(lo[v], lo[u])
    for u, v in sorted(edges, key=lambda e: -e[1]):
        hi[u] = min(hi[u], hi[v])
    return lo, hi


def fits_windows(lo: list[int], hi: list[int], stage_of: list[int]) -> bool:
    """Whether a partition lies inside the windows."""
    return all(a <= s <= b for a, s, b in zip(lo, stage_of, hi))

