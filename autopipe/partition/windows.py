"""Stage windows: the range of stages each block can take in any partition better than a known one.

[Note: stage windows]

With an incumbent partition of iteration time Z, any better partition has a step of
at most Z. Every path through the schedule's task DAG bounds the step from below
([Note: the step time is a longest path]), and with W_j = F_j + B_j the busy time
per micro-batch of stage j, a path with nF_j forwards and nB_j backwards of stage j
gives Σ_j min(nF_j, nB_j)·W_j ≤ Z. All work is placed somewhere: Σ_j speed_j·W_j = W.
Over these constraints a small LP finds, for each k, the most work stages 0 … k can
hold (cap_k) and the most stages k … p−1 can hold (cap'_k).

With a split backward (zb-h1) a path's W tasks are few (they fill the bubble), so the
LP also tracks V_j = F_j + B_j^input ≤ W_j, the part of the work that is not weight
gradients: a path gives Σ_j min(nF_j, nB_j)·V_j + nW_j·(W_j − V_j) ≤ Z, each stage's
V_j/W_j lies between the least and the most any block has, Σ_j speed_j·V_j = V, and
the caps bound both W and V.

Block b and all its ancestors (work A_b) sit in stages 0 … stage(b), so stage(b) is
at least the first k with cap_k ≥ A_b; symmetrically its descendants (work D_b) need
cap'_{stage(b)} ≥ D_b (and likewise for V). The windows are then made consistent along
edges. They fix most ILP variables before the solver starts, without cutting off any
partition better than the incumbent (the paths are the incumbent's critical ones and those of a few
extreme cost patterns: any set of real paths gives valid windows).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pulp

from autopipe.partition._solvers import highs_available, solve
from autopipe.partition.problem import Problem
from autopipe.partition.timeline import Count, splits_backward

LP_SECONDS = 60.0
"""Seconds for an LP of stage windows (HiGHS killed and CBC asked after about 1.5 times
that: [Note: a solver held to its deadline] in ``autopipe.partition._highs``)."""

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


def _measures(problem: Problem) -> list[list[float]]:
    """Per-block amounts the caps bound: the work, and with a split backward also the
    work that is not weight gradients (see [Note: stage windows])."""
    work = [b.work_s for b in problem.blocks]
    if not splits_backward(problem.config.schedule):
        return [work]
    return [work, [b.forward_s + b.backward_input_s for b in problem.blocks]]


def _path_lp(problem: Problem, paths: Sequence[Count], step: float | None,
             sense: int) -> tuple[pulp.LpProblem, list[list[pulp.LpVariable]], pulp.LpVariable, float]:
    """The LP of [Note: stage windows]: per measure of ``_measures``, each stage's share of
    it (amounts / total work), every path ≤ z, z = ``step`` / total work when given, else
    free (to be minimised: ``path_bound``). Returns it, the amounts, z and the total work."""
    cfg = problem.config
    p = cfg.num_stages
    speeds = [d.speed for d in cfg.devices]
    measures = _measures(problem)
    total = float(sum(measures[0]))
    # u_j = W_j / total keeps every coefficient near 1 (v_j = V_j / total likewise)
    lp = pulp.LpProblem("caps", sense)

    def variable(name: str, bound: float | None = None) -> pulp.LpVariable:
        return (lp.add_variable(name, lowBound=bound or 0, upBound=bound) if hasattr(lp, "add_variable")
                else pulp.LpVariable(name, lowBound=bound or 0, upBound=bound))

    z = variable("z", None if step is None else step / total)
    u = [variable(f"u{j}") for j in range(p)]
    lp += (pulp.lpSum(speeds[j] * u[j] for j in range(p)) == 1.0, "work")
    amounts = [u]
    if len(measures) == 1:
        for i, (nf, nb, *_) in enumerate(sorted(set(paths))):
            lp += (pulp.lpSum(min(nf[j], nb[j]) * u[j] for j in range(p)) - z <= 0, f"path{i}")
    else:
        v = [variable(f"v{j}") for j in range(p)]
        amounts.append(v)
        lp += (pulp.lpSum(speeds[j] * v[j] for j in range(p)) == sum(measures[1]) / total, "rest")
        ratios = [r / w for w, r in zip(*measures) if w > 0]
        for j in range(p):
            lp += (v[j] - min(ratios) * u[j] >= 0, f"least{j}")
            lp += (v[j] - max(ratios) * u[j] <= 0, f"most{j}")
        for i, (nf, nb, nw, *_) in enumerate(sorted(set(paths))):
            lp += (pulp.lpSum(nw[j] * u[j] + (min(nf[j], nb[j]) - nw[j]) * v[j] for j in range(p))
                   - z <= 0, f"path{i}")
    return lp, amounts, z, total


def _optimum(lp: pulp.LpProblem) -> float | None:
    """The LP's optimal objective, None where the solver fails or overruns ``LP_SECONDS``
    (only a bound or a narrowing is lost)."""
    solver = "highs" if highs_available() else "cbc"
    raw = solve(lp, solver=solver, warm=None, time_limit=LP_SECONDS, gap=0.0)
    return raw.objective if raw.status == "optimal" else None


def path_bound(problem: Problem, paths: Sequence[Count]) -> float:
    """A lower bound on any partition's step: the least step at which the LP of [Note: stage
    windows] over ``paths`` (real paths of the schedule's task DAG, e.g. ``seed_paths``)
    can place all the work. It sees the schedule: 1F1B's fill and drain, GPipe's m
    forwards before the backwards, the chunks of interleaved 1F1B. It leaves out sends,
    the optimizer steps and the runtime's overheads (they only add), so ``simple_bound``'s
    terms can still be larger. 0 when the LP fails."""
    if problem.config.num_stages < 2 or not paths or not sum(b.work_s for b in problem.blocks) > 0:
        return 0.0
    lp, _, z, total = _path_lp(problem, paths, None, pulp.LpMinimize)
    lp.setObjective(z)
    got = _optimum(lp)
    return 0.0 if got is None else got * total * (1 - 1e-7)


def stage_caps(problem: Problem, paths: Sequence[Count],
               step_s: float) -> list[tuple[list[float], list[float]]]:
    """Per measure of ``_measures``, (cap_k, cap'_k): the most of it stages ≤ k, and
    stages ≥ k, can hold in a step ≤ ``step_s``."""
    cfg = problem.config
    p = cfg.num_stages
    speeds = [d.speed for d in cfg.devices]
    measures = _measures(problem)
    total = float(sum(measures[0]))
    if not total > 1e-12 * step_s or not total > 0:
        # nothing to balance: every stage can hold it all
        return [([np.inf] * p, [np.inf] * p) for _ in measures]
    lp, amounts, _, _ = _path_lp(problem, paths, step_s, pulp.LpMaximize)
    out: list[tuple[list[float], list[float]]] = []
    for x in amounts:
        caps: list[float] = []
        for part in [list(range(k + 1)) for k in range(p)] + [list(range(k, p)) for k in range(p)]:
            lp.setObjective(pulp.lpSum(speeds[j] * x[j] for j in part))
            value = _optimum(lp)
            caps.append(value * total * (1 + 1e-7) + 1e-12 if value is not None else np.inf)
        out.append((caps[:p], caps[p:]))
    return out


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
        caps = stage_caps(problem, paths, incumbent_s * (1 + 1e-9))
        for amount, (fill, drain) in zip(_measures(problem), caps):
            work = np.array(amount)
            above = anc @ work          # A_b: work of b and its ancestors
            below = anc.T @ work        # D_b: work of b and its descendants
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

