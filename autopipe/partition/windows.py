"""Stage windows: the range of stages each block can take in any partition better than a known one.

[Note: stage windows]

With an incumbent partition of iteration time Z, any better partition has a step of
at most Z. Every path through the schedule's task DAG bounds the step from below
([Note: the step time is a longest path]), and with W_j = F_j + B_j the busy time
per micro-batch of stage j, a path with nF_j forwards and nB_j backwards of stage j
gives Σ_j min(nF_j, nB_j)·W_j ≤ Z (with a split backward min(nF_j, nB_j, nW_j), as B
and W then each run part of the backward). All work is placed somewhere: Σ_j speed_j·W_j = W.
Over these constraints a small LP finds, for each k, the most work stages 0 … k can
hold (cap_k) and the most stages k … p−1 can hold (cap'_k).

Block b and all its ancestors (work A_b) sit in stages 0 … stage(b), so stage(b) is
at least the first k with cap_k ≥ A_b; symmetrically its descendants (work D_b) need
cap'_{stage(b)} ≥ D_b. The windows are then made consistent along edges. They fix
most ILP variables before the solver starts, without cutting off any partition better
than the incumbent (the paths are the incumbent's critical ones and those of a few
extreme cost patterns: any set of real paths gives valid windows).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pulp

from autopipe.partition._solvers import quiet_highs
from autopipe.partition.problem import Problem
from autopipe.partition.timeline import Count, splits_backward

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


def stage_caps(problem: Problem, paths: Sequence[Count], step_s: float) -> tuple[list[float], list[float]]:
    """(cap_k, cap'_k): the most work stages ≤ k, and stages ≥ k, can hold in a step ≤ ``step_s``."""
    cfg = problem.config
    p = cfg.num_stages
    speeds = [d.speed for d in cfg.devices]
    total = float(sum(b.work_s for b in problem.blocks))
    if not total > 1e-12 * step_s or not total > 0:
        return [np.inf] * p, [np.inf] * p  # nothing to balance: every stage can hold it all
    # u_j = W_j / total keeps every coefficient near 1
    lp = pulp.LpProblem("caps", pulp.LpMaximize)
    u = [lp.add_variable(f"u{j}", lowBound=0) if hasattr(lp, "add_variable")
         else pulp.LpVariable(f"u{j}", lowBound=0) for j in range(p)]
    lp += (pulp.lpSum(speeds[j] * u[j] for j in range(p)) == 1.0, "work")
    split = splits_backward(cfg.schedule)
    for i, (nf, nb, nw, _) in enumerate(sorted(set(paths))):
        whole = [min(nf[j], nb[j], nw[j]) if split else min(nf[j], nb[j]) for j in range(p)]
        lp += (pulp.lpSum(whole[j] * u[j] for j in range(p)) <= step_s / total, f"path{i}")
    quiet_highs()
    caps: list[float] = []
    for part in [list(range(k + 1)) for k in range(p)] + [list(range(k, p)) for k in range(p)]:
        lp.setObjective(pulp.lpSum(speeds[j] * u[j] for j in part))
        try:
            lp.solve(pulp.HiGHS(msg=False) if pulp.HiGHS().available()
                     else pulp.PULP_CBC_CMD(msg=False))
            value = pulp.value(lp.objective)
            ok = lp.status == pulp.LpStatusOptimal and value is not None
        except (IndexError, pulp.PulpSolverError):  # a solver failure only loses the narrowing
            ok = False
        caps.append(float(value) * total * (1 + 1e-7) + 1e-12 if ok else np.inf)
    return caps[:p], caps[p:]


def windows(problem: Problem, anc: BoolMatrix, incumbent_s: float | None = None,
            paths: Sequence[Count] = ()) -> tuple[list[int], list[int]]:
    """Per block, the lowest and highest stage of a partition no slower than ``incumbent_s``.

    See [Note: stage windows]. Without an incumbent (or paths) only pins and edges
    narrow the windows.
    """
    cfg = problem.config
    p = cfg.num_stages
    lo, hi = pinned_windows(problem)
    if incumbent_s is not None and p > 1 and paths:
        work = np.array([b.work_s for b in problem.blocks])
        above = anc @ work          # A_b: work of b and its ancestors
        below = anc.T @ work        # D_b: work of b and its descendants
        fill, drain = stage_caps(problem, paths, incumbent_s * (1 + 1e-9))
        for b in range(problem.size):
            k_lo = next((k for k in range(p) if fill[k] >= above[b]), p - 1)
            lo[b] = max(lo[b], k_lo)
            k_hi = next((k for k in range(p - 1, -1, -1) if drain[k] >= below[b]), 0)
            hi[b] = min(hi[b], k_hi)
    edges = problem.edges()
    for u, v in edges:               # sorted by u: forward pass
        lo[v] = max(lo[v], lo[u])
    for u, v in sorted(edges, key=lambda e: -e[1]):
        hi[u] = min(hi[u], hi[v])
    return lo, hi


def fits_windows(lo: list[int], hi: list[int], stage_of: list[int]) -> bool:
    """Whether a partition lies inside the windows."""
    return all(a <= s <= b for a, s, b in zip(lo, stage_of, hi))

