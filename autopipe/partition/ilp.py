"""The integer program: convex stages, the schedule's step time, per-device memory.

[Note: the ILP]

Binary y[b,s] = "block b is in a stage ≤ s" for s = 0 … p−2 (y[b,−1] = 0, y[b,p−1] = 1):

    y[b,s] ≤ y[b,s+1]                      monotone in s
    y[v,s] ≤ y[u,s]      for each edge u→v  convex: stage(u) ≤ stage(v)
    x[b,s] = y[b,s] − y[b,s−1]             block b is in stage s (not a variable)

A value made in block u and last read in blocks D crosses boundary s when
y[u,s] = 1 and y[d,s] = 0 for some d ∈ D; with one latest reader d that is exactly
y[u,s] − y[d,s], else a variable c ≥ y[u,s] − y[d,s] for each d. X_s sums the bytes, Y_s
those of the values that do not go forward only (their gradients come back) where a value
with a gradient crosses (g_s ≥ each crossing of one; a value without one counts through
o ≥ its crossing + g_s − 1), and a_s ≥ each crossing of one that goes forward only (its
message: [Note: what a cut sends] in ``autopipe.schedule.traffic``).
A parameter read by several blocks gets z[q,s] ≥ x[b,s] for each reader b (it is held
by stage s). Then, with the formulas of [Note: the cost model]:

    F_s = Σ_b forward_b/speed_s · x[b,s],  B_s, W_s likewise,
    c_b = X_b / bandwidth + (1 + a_b)·latency,  r_b = Y_b / bandwidth + latency
    memory_s ≤ limit_s,     Σ_b real_b · x[b,s] ≥ 1 (no empty stage)
    T ≥ Σ_s nF_s·F_s + nB_s·B_s + nW_s·W_s + Σ_b nC_b·c_b + nR_b·r_b
                                              for each path cut (nF, nB, nW, nC, nR)

B_s is the B task's time: the whole backward, or only the input gradients where the
schedule runs the weight gradients W_s as tasks of their own (zb-h1, zbv, dualpipev, whose
full backwards are a B and a W back to back: [Note: DualPipeV]; elsewhere nW = 0).
With virtual stages the s above are chunks, and the memory rows are per rank and moment
of its program (``_rank_memory``, [Note: chunks]).
Values made again ([Note: values made again] in ``autopipe.trace.remade``) cross no
boundary; F_s gains forward_g/speed_s · m[g,s] for each group g of the nodes that make them
(``Problem.remakes``), m[g,s] ≥ x[d,s] − x[u,s] for each of g's values, made in block u and
read in block d.
With recomputation ([Note: recomputation] in ``autopipe.partition.costs``) each candidate
block has r[b,s] ≤ x[b,s], binary under ``auto`` and x[b,s] itself under ``full``: B_s
gains forward_b · r[b,s] (so does W_s under a split backward: [Note: recomputation in a
split backward]), memory_s loses inflight_s · activation_b · r[b,s] and gains
inflight_s · bytes_v · w[v,s] for the values kept, w[v,s] ≥ r[d,s] − r[k,s] (u ≤ k < d,
u and d in one layer; else w[v,s] ≥ r[d,s]), and A_s ≥ Σ_{b in layer l} activation_b ·
r[b,s] for each layer l ([Note: a region per layer]; one layer: that sum itself).
With virtual stages the chunk's saved bytes per micro-batch lose activation_b · r[b,s] and
gain bytes_v · w[v,s], and each rank's rows gain L_r ≥ A_c for each of its chunks c.
    minimise T + Σ_q bytes_q/bandwidth · (Σ_s z[q,s] − 1)

The step time is the longest path of the schedule's task DAG ([Note: the step time
is a longest path]); every path is a valid cut, and the solver loop adds the critical
path of each answer until the MIP's T is the answer's true step time. The monotone y
form has a much tighter LP relaxation than one-hot x[b,s] variables; stage windows
([Note: stage windows]) fix most y before the solver starts, and the best chain
partition (DP or a baseline) is handed to HiGHS as the starting solution.

[Note: ties]

Many partitions often share the optimal step: when one block dominates (a vocabulary
head), the step is m·T_head + Σ (the other stages' work), the same however the other
blocks are spread, as long as no stage outgrows the head. The MIP then returns any of
them, e.g. a stage with two nodes next to one with half the model; that is optimal for
the measured costs and fragile when they are off. So once the step is solved, every
partition whose step is within min(gap, TIE_WINDOW = 0.1%) of the proven bound counts as
a tie (the answer keeps its certificate), and further MIP solves on the same model, with
the step capped there, pick among them by ``costs.tie_key``, one criterion at a time, each
then held within its band (``costs.TIE_BANDS``) of the best value while the next is decided:

    1. the smallest bottleneck: the slowest stage's busy time (forward + backward), within
       5%; no solve when the incumbent's is already the floor (a block alone in its stage)
    2. the heaviest lightest stage, within 25%: no stage idles while others could share
       the work
    3. the least memory: the largest share of its device a stage needs, within 5%
    4. the fastest step among what is left

(2) is what spreads the GPT-2 quick start's body over three stages; with (1) and (3)
alone the memory criterion would leave stage 0 the embedding only, since it holds the
most micro-batches in flight. The bands and (4) keep the step from paying for differences
that do not matter: exact lexicographic choices gave up to 0.1% of the step (the whole
gap) for lightest stages a few percent heavier; with the bands the golden cases keep their
steps. Each solve is warm-started from the current choice, which is feasible, so no
criterion gets worse than the answer's; an answer whose simulated step exceeds the cap
(its critical path was not yet a cut) adds its paths and is solved again. Each solve stops
after TIE_NODES branch-and-bound nodes (the same answer on any machine), and all of them
within TIE_TIME (for huge models, where a hundred nodes take seconds): the choice is then
the best found.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import pulp

from autopipe._phases import phase
from autopipe.partition import _solvers
from autopipe.partition.costs import (
    MEMORY_HEADROOM,
    TIE_BANDS,
    Evaluation,
    evaluate,
    layers_of,
    memory_scales,
    tie_key,
    violations,
)
from autopipe.partition.problem import REGION_SPAN, Problem
from autopipe.partition.recompute import prune
from autopipe.partition.timeline import Count, nearby_paths, seed_paths, splits_backward
from autopipe.partition.windows import BoolMatrix, ancestors, fits_windows, windows

Term: TypeAlias = Any
"""A ``pulp.LpVariable`` or one of the constants 0 and 1 (PuLP has no type hints)."""
Solution: TypeAlias = tuple[tuple[int, ...], tuple[int, ...]]
"""A partition (block → stage) and the blocks it recomputes."""


@dataclass(frozen=True, slots=True, kw_only=True)
class IlpResult:
    """The ILP's answer."""

    stage_of: tuple[int, ...] | None
    """Block → stage, None without a solution."""
    status: str
    """``optimal``, ``feasible``, ``infeasible``, ``unsolved``, or ``beaten``: no partition
    that fits has a step under the ``cutoff`` (proven), and none was given to keep."""
    objective_s: float
    """Iteration time of ``stage_of`` (``inf`` without a solution)."""
    lower_bound_s: float
    """Proven: no partition of these blocks is faster."""
    model_objective_s: float
    """The MIP's own objective value for its solution (equals ``objective_s`` when the
    model is right; NaN when the incumbent was kept)."""
    seconds: float
    solver: str
    binaries: int
    """Binary variables left after stage windows fixed the others."""
    rounds: int
    """MIP solves (each after adding a critical-path cut)."""
    recompute: tuple[int, ...] = ()
    """Blocks recomputed in ``stage_of`` ([Note: recomputation] in ``autopipe.partition.costs``)."""


def _clean(x: float) -> float:
    """``x``, or 0 when it is too small to matter (and might be subnormal)."""
    return x if abs(x) > 1e-13 else 0.0


class _Lin:
    """A linear expression under construction: variable → coefficient, plus a constant."""

    __slots__ = ("coef", "const")

    def __init__(self) -> None:
        self.coef: dict[pulp.LpVariable, float] = {}
        self.const = 0.0

    def add(self, term: Term | _Lin, k: float) -> None:
        if k == 0:
            return
        if isinstance(term, _Lin):
            for v, c in term.coef.items():
                self.coef[v] = self.coef.get(v, 0.0) + k * c
            self.const += k * term.const
        elif isinstance(term, int):
            self.const += k * term
        else:
            self.coef[term] = self.coef.get(term, 0.0) + k

    def expr(self) -> pulp.LpAffineExpression:
        # coefficients are in units near 1; dropping ones below 1e-13 changes nothing the
        # evaluator would see, and keeps subnormal numbers out of the solvers (CBC fails on them)
        return pulp.LpAffineExpression([(v, c) for v, c in self.coef.items() if abs(c) > 1e-13],
                                       constant=_clean(self.const))

    def value(self, values: dict[str, float]) -> float:
        return self.const + sum(c * values[v.name] for v, c in self.coef.items())

    def is_const(self) -> bool:
        return not any(abs(c) > 1e-13 for c in self.coef.values())


class _Model:
    """The PuLP model of [Note: the ILP] for one Problem and its stage windows."""

    def __init__(self, problem: Problem, anc: BoolMatrix, lo: list[int], hi: list[int]) -> None:
        self.problem = problem
        cfg = problem.config
        p = cfg.num_stages
        self.p = p
        self.lo, self.hi = lo, hi
        self.prob = pulp.LpProblem("autopipe", pulp.LpMinimize)
        self.rows: dict[str, _Lin] = {}
        """Every constraint's left-hand side, by name (for tests and diagnosis)."""
        self.rhs: dict[str, float] = {}
        """The right-hand sides that are not 0, by name."""
        self.infeasible = False
        """A row that the windows alone decide is violated (e.g. a pinned block overflows)."""
        per_tensor, per_byte = problem.config.optimizer_step
        total = sum(b.work_s for b in problem.blocks) + sum(
            per_tensor + per_byte * problem.param_bytes.get(q, 0) for q in problem.readers())
        bw = problem.config.link_bandwidth
        sends = 0.0 if math.isinf(bw) else sum(v.bytes for v in problem.values) / bw
        # time unit: keeps coefficients near 1 (below a nanosecond nothing matters); the
        # optimizer steps and the sends count too, or a model of them alone has coefficients
        # near 1e9 (HiGHS then calls feasible models infeasible)
        self.tau = max(total / p, sends / p, 1e-9)
        self.y: list[list[Term]] = []
        self.binaries = 0
        for b in range(problem.size):
            row: list[Term] = []
            for s in range(p - 1):
                if s < lo[b]:
                    row.append(0)
                elif s >= hi[b]:
                    row.append(1)
                else:
                    row.append(self._var(f"y_{b}_{s}", cat=pulp.LpBinary))
                    self.binaries += 1
            self.y.append(row)
        self.crossing_vars: list[tuple[pulp.LpVariable, list[_Lin]]] = []
        self.holder_vars: list[tuple[pulp.LpVariable, list[_Lin]]] = []
        self.candidates = problem.recompute_candidates()
        self.probing = not self.candidates
        """Whether HiGHS may probe in presolve (not with recomputation: ``_solvers.NO_PROBING``)."""
        self.r: dict[tuple[int, int], Term] = {}
        """r[b,s] = "block b is in stage s and recomputed" (``auto`` only; ≤ x[b,s])."""
        if cfg.recompute == "auto":
            for b in self.candidates:
                for s in range(lo[b], hi[b] + 1):
                    self.r[(b, s)] = self._var(f"r_{b}_{s}", cat=pulp.LpBinary)
                    self.binaries += 1
        self.kept_vars: list[tuple[pulp.LpVariable, list[_Lin]]] = []
        """w[v,s], the largest of its terms: value v is kept by a region of stage s."""
        self.peak_vars: list[tuple[pulp.LpVariable, list[_Lin]]] = []
        """L_r, the largest of its terms: the recomputed activations alive again on rank r."""
        self.layer_vars: list[tuple[pulp.LpVariable, list[_Lin]]] = []
        """A_s, the largest of its terms: the recomputed activations of stage s's largest
        layer ([Note: a region per layer] in ``autopipe.partition.costs``)."""
        self._order(anc)
        x_bytes, y_bytes, forward_messages, back_messages = self._crossings(anc)
        held = self._holders()
        self._objective(x_bytes, y_bytes, forward_messages, back_messages, held)

    def _var(self, name: str, *, upBound: float | None = None,
             cat: str = pulp.LpContinuous) -> Term:
        # PuLP 3.1+ attaches variables to the model; older ones construct them directly
        if hasattr(self.prob, "add_variable"):
            return self.prob.add_variable(name, lowBound=0, upBound=upBound, cat=cat)
        return pulp.LpVariable(name, lowBound=0, upBound=upBound, cat=cat)

    def Y(self, b: int, s: int) -> Term:  # the y[b,s] of the note
        if s < 0:
            return 0
        if s >= self.p - 1:
            return 1
        return self.y[b][s]

    def x(self, b: int, s: int) -> _Lin:
        lin = _Lin()
        lin.add(self.Y(b, s), 1.0)
        lin.add(self.Y(b, s - 1), -1.0)
        return lin

    def recomputes(self, b: int, s: int) -> _Lin:
        """1 when candidate block b is in stage s and recomputed ([Note: recomputation])."""
        if self.problem.config.recompute == "full":
            return self.x(b, s)
        lin = _Lin()
        lin.add(self.r[(b, s)], 1.0)
        return lin

    def _add(self, lin: _Lin, sense: str, rhs: float, name: str) -> None:
        self.rows[name] = lin
        if rhs:
            self.rhs[name] = rhs
        if lin.is_const():  # decided by the windows alone: the solvers may drop empty rows
            tol = 1e-9 * max(1.0, abs(rhs))
            holds = {"<=": lin.const <= rhs + tol, ">=": lin.const >= rhs - tol,
                     "==": abs(lin.const - rhs) <= tol}[sense]
            if not holds:
                self.infeasible = True
            return
        e = lin.expr()
        if sense == "<=":
            self.prob += (e <= rhs, name)
        elif sense == "==":
            self.prob += (e == rhs, name)
        else:
            self.prob += (e >= rhs, name)

    def _named(self, lin: _Lin, name: str) -> _Lin:
        """A variable equal to ``lin`` (keeps the dense path cuts down to a few nonzeros)."""
        if lin.is_const():
            return lin
        var = self._var(name)
        row = _Lin()
        row.add(lin, 1.0)
        row.add(var, -1.0)
        self._add(row, "==", 0.0, f"def_{name}")
        self.defined.append((var, lin))
        out = _Lin()
        out.add(var, 1.0)
        return out

    def _order(self, anc: BoolMatrix) -> None:
        for b, row in enumerate(self.y):
            for s in range(self.lo[b], self.hi[b] - 1):
                self.prob += (row[s] <= row[s + 1], f"mono_{b}_{s}")
        succ: dict[int, list[int]] = {}
        for u, v in self.problem.edges():
            succ.setdefault(u, []).append(v)
        for u, vs in succ.items():
            arr = np.array(vs)
            for v in vs:
                # u→v is implied when another successor w of u reaches v
                if len(vs) > 1 and bool(np.any(anc[v, arr[arr != v]])):
                    continue
                for s in range(self.lo[v], self.hi[u]):
                    self.prob += (self.y[v][s] <= self.y[u][s], f"prec_{u}_{v}_{s}")

    def _crossings(self, anc: BoolMatrix) -> tuple[list[_Lin], list[_Lin], list[_Lin], list[_Lin]]:
        """Per boundary s, as expressions: X_s (bytes over it), Y_s (bytes of their gradients
        back: less those that go forward only), and its messages forward and back, as
        [Note: what a cut sends] in ``autopipe.schedule.traffic`` counts them: with g_s (1
        where a value with a gradient crosses) and a_s (1 where a value that goes forward
        only crosses), g_s back, and 1 + e_s forward, e_s ≥ g_s + a_s − 1 (both cross);
        the bytes back of a value without a gradient count only with g_s, through
        o ≥ its crossing + g_s − 1. Groups values by (producer, latest readers, whether they
        go forward only, whether they have a gradient)."""
        groups: dict[tuple[int, tuple[int, ...], bool, bool], int] = {}
        for v in self.problem.values:
            if v.bytes == 0:
                continue
            ds = v.dsts
            latest = tuple(d for d in ds if not any(e != d and anc[e, d] for e in ds))
            forward_only = self.problem.forward_only(v)
            key = (v.src, latest, forward_only, not v.no_grad)  # forward only: surely none
            groups[key] = groups.get(key, 0) + v.bytes
        x_bytes = [_Lin() for _ in range(self.p - 1)]
        y_bytes = [_Lin() for _ in range(self.p - 1)]
        alone: list[list[_Lin]] = [[] for _ in range(self.p - 1)]
        with_grad: list[list[_Lin]] = [[] for _ in range(self.p - 1)]
        # per boundary, the values without a gradient whose zeros come back with the
        # gradients, where any cross: (group, crossing, bytes)
        zeros: list[list[tuple[int, _Lin, int]]] = [[] for _ in range(self.p - 1)]
        for k, ((src, latest, forward_only, gradient), nbytes) in enumerate(sorted(groups.items())):
            for s in range(self.lo[src], min(max(self.hi[d] for d in latest), self.p - 1)):
                ysrc = self.Y(src, s)
                ys = [self.Y(d, s) for d in latest]
                ys = [t for t in ys if not (isinstance(t, int) and t == 1)]
                if not ys:
                    continue
                crossing = _Lin()
                if any(isinstance(t, int) for t in ys):   # a reader is surely later
                    crossing.add(ysrc, 1.0)
                elif len(ys) == 1:
                    crossing.add(ysrc, 1.0)
                    crossing.add(ys[0], -1.0)
                else:
                    c = self._var(f"c_{k}_{s}", upBound=1)
                    terms = []
                    for i, t in enumerate(ys):
                        diff = _Lin()
                        diff.add(ysrc, 1.0)
                        diff.add(t, -1.0)
                        terms.append(diff)
                        row = _Lin()
                        row.add(c, 1.0)
                        row.add(diff, -1.0)
                        self._add(row, ">=", 0.0, f"cross_{k}_{s}_{i}")
                    self.crossing_vars.append((c, terms))
                    crossing.add(c, 1.0)
                x_bytes[s].add(crossing, float(nbytes))
                if forward_only:
                    alone[s].append(crossing)
                elif gradient:
                    y_bytes[s].add(crossing, float(nbytes))
                else:
                    zeros[s].append((k, crossing, nbytes))
                if gradient:
                    with_grad[s].append(crossing)
        forward, back = [], []
        for s in range(self.p - 1):
            a = self._any(f"a_{s}", f"alone_{s}", alone[s], self.crossing_vars)
            g = self._any(f"g_{s}", f"grad_{s}", with_grad[s], self.crossing_vars)
            both = _Lin()
            both.add(g, 1.0)
            both.add(a, 1.0)
            both.const -= 1.0
            messages = self._any(f"e_{s}", f"messages_{s}", [both], self.crossing_vars)
            messages.const += 1.0
            forward.append(messages)
            back.append(g)
            for k, crossing, nbytes in zeros[s]:  # back with the gradients, if any cross
                both = _Lin()
                both.add(crossing, 1.0)
                both.add(g, 1.0)
                both.const -= 1.0
                y_bytes[s].add(self._any(f"o_{k}_{s}", f"zeros_{k}_{s}", [both], self.crossing_vars),
                               float(nbytes))
        return x_bytes, y_bytes, forward, back

    def _any(self, name: str, rows: str, terms: list[_Lin],
             registry: list[tuple[pulp.LpVariable, list[_Lin]]]) -> _Lin:
        """A variable in [0, 1] ≥ each of ``terms`` (expressions of at most 1; rows
        ``{rows}_{i}``), as an expression: the largest of them and 0 at the optimum, pushed
        down by the objective (a constant where the windows decide it). It goes into
        ``registry`` for ``warm``."""
        out = _Lin()
        if all(t.is_const() for t in terms):
            out.const = min(1.0, max([0.0, *(t.const for t in terms)]))
        elif any(t.is_const() and t.const >= 1 for t in terms):
            out.const = 1.0
        else:
            var = self._var(name, upBound=1)
            for i, t in enumerate(terms):
                row = _Lin()
                row.add(var, 1.0)
                row.add(t, -1.0)
                self._add(row, ">=", 0.0, f"{rows}_{i}")
            registry.append((var, terms))
            out.add(var, 1.0)
        return out

    def _holders(self) -> dict[str, list[_Lin]]:
        """For each parameter read by several blocks, 'held by stage s' per stage."""
        out: dict[str, list[_Lin]] = {}
        for k, (q, readers) in enumerate(sorted(self.problem.readers().items())):
            if len(readers) < 2:
                continue
            per_stage = []
            for s in range(self.p):
                held_by = [self.x(r, s) for r in readers if self.lo[r] <= s <= self.hi[r]]
                per_stage.append(self._any(f"z_{k}_{s}", f"hold_{k}_{s}", held_by, self.holder_vars))
            out[q] = per_stage
        return out

    def _objective(self, x_bytes: list[_Lin], y_bytes: list[_Lin], forward_messages: list[_Lin],
                   back_messages: list[_Lin], held: dict[str, list[_Lin]]) -> None:
        problem, p, tau = self.problem, self.p, self.tau
        cfg = problem.config
        readers = problem.readers()
        single_mem = [0.0] * problem.size
        single_temp = [0.0] * problem.size
        per_tensor, per_byte = cfg.optimizer_step
        step_of = {q: per_tensor + per_byte * problem.param_bytes.get(q, 0) for q in readers}
        single_step = [0.0] * problem.size
        for q, r in readers.items():
            if len(r) == 1:
                single_mem[r[0]] += problem.param_mem[q].total
                single_temp[r[0]] += problem.param_mem[q].step
                single_step[r[0]] += step_of[q]
        inv_bw = 0.0 if math.isinf(cfg.link_bandwidth) else 1.0 / cfg.link_bandwidth
        split = splits_backward(cfg.schedule)
        self.forward: list[_Lin] = []
        self.backward: list[_Lin] = []
        """The B task's time per stage (input gradients only when ``split``)."""
        self.weight: list[_Lin] = []
        """The W task's time per stage (zero without a split backward)."""
        self.optimizer: list[_Lin] = []
        """The optimizer step's time per stage (``autopipe.partition.costs.optimizer_steps``)."""
        self.sends: list[_Lin] = []
        """c_b: the values forward over boundary b, a message's latency each."""
        self.returns: list[_Lin] = []
        """r_b: their gradients back ([Note: values without a gradient] in ``autopipe.trace.no_grad``)."""
        self.defined: list[tuple[pulp.LpVariable, _Lin]] = []
        for b in range(p - 1):
            c, back = _Lin(), _Lin()
            if cfg.linked(b):  # else one rank hands it over in memory
                c.add(x_bytes[b], inv_bw / tau)
                c.add(forward_messages[b], cfg.send_latency_s / tau)
                back.add(y_bytes[b], inv_bw / tau)
                back.add(back_messages[b], cfg.send_latency_s / tau)
            self.sends.append(self._named(c, f"C_{b}"))
            self.returns.append(self._named(back, f"R_{b}"))
        self.memory: list[_Lin] = []
        """Each stage's memory as a share of ``memory_scales`` (its device's limit, if any);
        with virtual stages, each rank's at each moment of ``Config.live_sets``."""
        self.step_memory: list[_Lin] = []
        """The same during the optimizer step: no activations, the step's temporaries
        ([Note: the optimizer step's temporaries]); the peak is the larger of the two (with
        virtual stages, per rank)."""
        chunked = cfg.virtual_stages > 1
        remakes = problem.remakes()
        self.remake_vars: list[tuple[pulp.LpVariable, list[_Lin]]] = []
        """m[g,s], the largest of its terms: stage s runs group g of ``Problem.remakes`` again to
        make values it reads from an earlier stage ([Note: values made again] in
        ``autopipe.trace.remade``)."""
        activations: list[_Lin] = []
        """With virtual stages: per chunk, its saved bytes per micro-batch (as a share)."""
        alive: list[_Lin] = []
        """With virtual stages: per chunk, its recomputed activations alive again in a backward."""
        for s, scale in enumerate(memory_scales(problem)):
            dev = cfg.devices[s]
            fwd, bwd, wgt, mem, real, opt = _Lin(), _Lin(), _Lin(), _Lin(), _Lin(), _Lin()
            act, temp = _Lin(), _Lin()
            held_mb = 0 if chunked else cfg.inflight(s)  # chunks: per rank, below
            # the runtime's work around each action: the B task carries it when split too
            fwd.const += cfg.forward_overhead_s / tau
            bwd.const += cfg.backward_overhead_s / tau
            for b, blk in enumerate(problem.blocks):
                if not self.lo[b] <= s <= self.hi[b]:
                    continue
                x = self.x(b, s)
                fwd.add(x, blk.forward_s / dev.speed / tau)
                if split:
                    bwd.add(x, blk.backward_input_s / dev.speed / tau)
                    wgt.add(x, blk.backward_weight_s / dev.speed / tau)
                else:
                    bwd.add(x, (blk.backward_input_s + blk.backward_weight_s) / dev.speed / tau)
                mem.add(x, (single_mem[b] + held_mb * blk.activation_bytes) / scale)
                act.add(x, blk.activation_bytes / scale)
                temp.add(x, (single_mem[b] + single_temp[b]) / scale)
                real.add(x, float(blk.real))
                if single_step[b]:
                    opt.add(x, single_step[b] / dev.speed / tau)
            self._remakes(s, fwd, remakes)
            live = _Lin()
            if self.candidates:  # chunks: their saved bytes per micro-batch, per rank below
                # [Note: recomputation in a split backward]: W runs the forward again too
                self._recompute(s, scale, [bwd, wgt] if split else [bwd], act if chunked else mem,
                                1 if chunked else held_mb, live if chunked else mem)
            for q, per_stage in held.items():
                mem.add(per_stage[s], problem.param_mem[q].total / scale)
                temp.add(per_stage[s], (problem.param_mem[q].total + problem.param_mem[q].step) / scale)
                if step_of[q]:
                    opt.add(per_stage[s], step_of[q] / dev.speed / tau)
            self.forward.append(self._named(fwd, f"F_{s}"))
            self.backward.append(self._named(bwd, f"B_{s}"))
            self.weight.append(self._named(wgt, f"W_{s}"))
            self.optimizer.append(self._named(opt, f"O_{s}"))
            self._held_while_running(s, scale, mem)
            # [Note: the pipeline's buffers]: the outputs sent and, over a link, the copies
            # received are kept until their micro-batch's backward (activations); beyond
            # them two gradients received and one activation
            for lin in (mem, temp):
                if s < p - 1 and cfg.linked(s):
                    lin.add(y_bytes[s], 2.0 / scale)
                if s > 0 and cfg.linked(s - 1):
                    lin.add(x_bytes[s - 1], 1.0 / scale)
                lin.const += problem.batch_bytes(s) / scale  # [Note: the batch a rank holds]
                lin.const += problem.library(s) / scale  # [Note: the libraries' workspaces]
            kept = ([x_bytes[s]] if s < p - 1 else []) + ([x_bytes[s - 1]] if s > 0 and cfg.linked(s - 1) else [])
            for lin in kept:
                mem.add(lin, held_mb / scale)
                act.add(lin, 1.0 / scale)
            activations.append(act)
            alive.append(live)
            self.memory.append(mem)
            self.step_memory.append(temp)
            if dev.memory > 0 and not chunked:  # the scale is the limit
                self._add(mem, "<=", 1.0 - MEMORY_HEADROOM, f"mem_{s}")
                # twice the headroom: HiGHS accepts rows violated by its 1e-6 MIP tolerance,
                # and a stage exactly at its limit must stay out as ``evaluate`` keeps it out
                self._add(temp, "<=", 1.0 - 2 * MEMORY_HEADROOM, f"memstep_{s}")
            self._add(real, ">=", 1.0, f"nonempty_{s}")
        if chunked:
            self.memory = self._rank_memory(self.memory, activations, alive)
            self.step_memory = self._rank_step_memory(self.step_memory)
        self.step = self._var("T")
        self.paths: list[_Lin] = []
        self.counts: set[Count] = set()
        objective = _Lin()
        objective.add(self.step, 1.0)
        objective.const += problem.config.step_overhead_s / tau
        self._tied_sync(objective, held)
        self.objective = objective
        self.prob += objective.expr()

    def _remakes(self, s: int, fwd: _Lin, remakes: list[tuple[float, tuple[tuple[int, int], ...]]]) -> None:
        """Adds to stage s's forward the nodes it runs again ([Note: values made again] in
        ``autopipe.trace.remade``): for each group of them (``Problem.remakes``),
        m[g,s] ≥ x[d,s] − x[u,s] for each value made from it, produced in block u and read in
        block d (a reader on s, its producer on an earlier stage), and F_s gains the group's
        forward times m[g,s], as ``evaluate`` counts it."""
        speed, tau = self.problem.config.devices[s].speed, self.tau
        for g, (forward_s, pairs) in enumerate(remakes):
            if forward_s <= 0:
                continue
            terms = []
            for u, d in pairs:
                if not self.lo[d] <= s <= self.hi[d] or self.lo[u] >= s:  # d not on s, or u surely on s
                    continue
                diff = _Lin()
                diff.add(self.x(d, s), 1.0)
                diff.add(self.x(u, s), -1.0)
                terms.append(diff)
            if not terms:
                continue
            var = self._var(f"m_{g}_{s}", upBound=1)
            for i, diff in enumerate(terms):
                self._row([(var, 1.0), (diff, -1.0)], ">=", f"remake_{g}_{s}_{i}")
            self.remake_vars.append((var, terms))
            fwd.add(var, forward_s / speed / tau)

    def _held_while_running(self, s: int, scale: float, mem: _Lin) -> None:
        """Adds to stage s's memory (a share of ``scale``) what one of its calls holds while it
        runs, alongside the activations and not the optimizer step
        (``Problem.held_while_running``): the loss's workspace on the last stage, or K_s ≥
        each of its blocks' ``transient_bytes`` (a call's scratch and the gradients around
        it), when any block that may be on it has more."""
        problem = self.problem
        loss = problem.workspace / scale if s == self.p - 1 else 0.0
        transient = [b for b, blk in enumerate(problem.blocks)
                    if blk.transient_bytes / scale > loss and self.lo[b] <= s <= self.hi[b]]
        if not transient:
            mem.const += loss
            return
        var = self._var(f"K_{s}")
        terms = []
        for b in transient:
            term = _Lin()
            term.add(self.x(b, s), problem.blocks[b].transient_bytes / scale)
            terms.append(term)
            self._row([(term, 1.0), (var, -1.0)], "<=", f"transient_{b}_{s}")
        if loss:
            terms.append(_Lin())
            terms[-1].const = loss
            self._row([(terms[-1], 1.0), (var, -1.0)], "<=", f"transient_loss_{s}")
        self.peak_vars.append((var, terms))
        mem.add(var, 1.0)

    def _rank_memory(self, static: list[_Lin], activations: list[_Lin], alive: list[_Lin]) -> list[_Lin]:
        """Per rank and moment of its program ([Note: chunks]): its chunks' static memory plus
        the micro-batches each holds then times its activations, plus L_r, the largest of its
        chunks' recomputed activations alive again (``alive``; [Note: recomputation]), as a
        share of the rank's device; the rows ``mem_r{rank}_{k}`` keep each under the limit."""
        cfg = self.problem.config
        rows = []
        for r, moments in enumerate(cfg.live_sets()):
            chunks = [c for c in range(cfg.num_stages) if cfg.rank_of(c) == r]
            again = {c: alive[c] for c in chunks if not alive[c].is_const()}
            peak = _Lin()
            if len(again) == 1:
                peak = next(iter(again.values()))
            elif again:
                var = self._var(f"L_{r}")
                self.peak_vars.append((var, list(again.values())))
                peak.add(var, 1.0)
                for c, lin in again.items():
                    self._row([(lin, 1.0), (var, -1.0)], "<=", f"alive_{r}_{c}")
            for k, held in enumerate(moments):
                row = _Lin()
                row.add(peak, 1.0)
                for c in chunks:
                    row.add(static[c], 1.0)
                    row.add(activations[c], float(held[c]))
                rows.append(row)
                if cfg.devices[chunks[0]].memory > 0:
                    self._add(row, "<=", 1.0 - MEMORY_HEADROOM, f"mem_r{r}_{k}")
        return rows

    def _rank_step_memory(self, temps: list[_Lin]) -> list[_Lin]:
        """Per rank: its chunks' memory during the optimizer step (no activations), as a share
        of the rank's device; the rows ``memstep_r{rank}`` keep each under the limit."""
        cfg = self.problem.config
        rows = []
        for r in range(cfg.num_ranks):
            chunks = [c for c in range(cfg.num_stages) if cfg.rank_of(c) == r]
            row = _Lin()
            for c in chunks:
                row.add(temps[c], 1.0)
            rows.append(row)
            if cfg.devices[chunks[0]].memory > 0:
                self._add(row, "<=", 1.0 - 2 * MEMORY_HEADROOM, f"memstep_r{r}")
        return rows

    def _recompute(self, s: int, scale: float, passes: list[_Lin], saved: _Lin, inflight: int,
                   live: _Lin) -> None:
        """Stage s's recomputation terms ([Note: recomputation] in ``autopipe.partition.costs``):
        the forward again in each of ``passes`` (B; and W where the backward is split), the
        activations dropped from ``saved`` (× ``inflight`` micro-batches) and alive again in
        ``live``, and the values kept for the regions, w[v,s] ≥ r[d,s] − r[k,s] for u ≤ k < d."""
        problem, cfg, tau = self.problem, self.problem.config, self.tau
        speed = cfg.devices[s].speed
        here = {b for b in self.candidates if self.lo[b] <= s <= self.hi[b]}
        if not here:
            return
        breaks = problem.region_breaks()
        layer = layers_of(problem.size, breaks)
        alive: dict[int, _Lin] = {}  # per layer ([Note: a region per layer])
        for b in sorted(here):
            again = self.recomputes(b, s)
            if cfg.recompute == "auto":
                self._row([(again, 1.0), (self.x(b, s), -1.0)], "<=", f"rec_{b}_{s}")
            for lin in passes:
                lin.add(again, problem.blocks[b].forward_s / speed / tau)
            saved.add(again, -inflight * problem.blocks[b].activation_bytes / scale)
            alive.setdefault(layer[b], _Lin()).add(again, problem.blocks[b].activation_bytes / scale)
        if len(alive) == 1:
            live.add(next(iter(alive.values())), 1.0)
        else:  # the largest layer's: A_s ≥ each
            most = self._var(f"A_{s}")
            self.layer_vars.append((most, list(alive.values())))
            live.add(most, 1.0)
            for u, lin in alive.items():
                self._row([(lin, 1.0), (most, -1.0)], "<=", f"layer_{s}_{u}")
        for i, v in enumerate(problem.values):
            readers = [d for d in v.dsts if d in here]
            if not readers or v.bytes == 0 or v.param_view:  # [Note: a parameter's view is kept free]
                continue
            kept = self._var(f"w_{i}_{s}", upBound=1)
            terms: list[_Lin] = []
            for d in readers:
                inside = range(v.src, d)
                if d - v.src >= REGION_SPAN or layer[d] != layer[v.src] or any(k not in here for k in inside):
                    inside = range(0)  # never made in d's region: kept whenever d recomputes
                for k in inside or [None]:
                    diff = self.recomputes(d, s)
                    if k is not None:
                        diff.add(self.recomputes(k, s), -1.0)
                    terms.append(diff)
                    self._row([(diff, 1.0), (kept, -1.0)], "<=", f"kept_{i}_{s}_{d}_{k}")
            self.kept_vars.append((kept, terms))
            saved.add(kept, inflight * v.bytes / scale)

    def _row(self, terms: list[tuple[Term | _Lin, float]], sense: str, name: str, rhs: float = 0.0) -> None:
        row = _Lin()
        for term, k in terms:
            row.add(term, k)
        self._add(row, sense, rhs, name)

    def _tied_sync(self, objective: _Lin, held: dict[str, list[_Lin]]) -> None:
        """Add each tied parameter's gradient all-reduce over its k holding stages.

        A ring costs ``ring_allreduce_per_byte(k)`` a byte: 0, 1, 4/3, 3/2… of bytes/bw for
        k = 1, 2, 3, 4, plus k − 1 latencies: increasing and concave in k, so a
        minimisation needs binaries to price it. ``a_j`` ("at least j holders", j ≥ 2) are ordered (a_j ≥ a_{j+1}) and
        Σ a_j ≥ k − 1; the objective adds the increments f(j) − f(j−1) times a_j, which the
        minimum sets to exactly the first k − 1 of them (see ``Config.allreduce_s``). A tied
        embedding over two holders (``Problem.rows_params``) is priced on the rows line
        instead (``Config.tied_sum_s``)."""
        cfg, tau = self.problem.config, self.tau
        self.tied_levels: list[tuple[list[_Lin], list[Term]]] = []
        bw = cfg.allreduce_bandwidth if cfg.allreduce_bandwidth > 0 else cfg.link_bandwidth
        if math.isinf(bw):
            return
        readers = self.problem.readers()
        for k, (q, per_stage) in enumerate(held.items()):
            nbytes = self.problem.param_bytes[q]
            most = min(self.p, len(readers[q]))
            cat = pulp.LpContinuous if most == 2 else pulp.LpBinary
            count = _Lin()
            for h in per_stage:
                count.add(h, 1.0)
            levels: list[Term] = []
            for j in range(2, most + 1):
                a = self._var(f"a_{k}_{j}", upBound=1, cat=cat)
                if cat == pulp.LpBinary:
                    self.binaries += 1
                if levels:
                    row = _Lin()
                    row.add(levels[-1], 1.0)
                    row.add(a, -1.0)
                    self._add(row, ">=", 0.0, f"tied_order_{k}_{j}")
                levels.append(a)
                rows = q in self.problem.rows_params
                step = cfg.tied_sum_s(nbytes, j, rows) - cfg.tied_sum_s(nbytes, j - 1, rows)
                objective.add(a, step / tau)
            row = _Lin()
            for a in levels:
                row.add(a, 1.0)
            row.add(count, -1.0)
            self._add(row, ">=", -1.0, f"tied_count_{k}")
            self.tied_levels.append((per_stage, levels))

    def add_path(self, count: Count) -> None:
        """Cut: the step is at least this path's length (see [Note: the step time is a longest path])."""
        nf, nb, nw, nc, no = count
        path = _Lin()
        for s in range(self.p):
            path.add(self.forward[s], float(nf[s]))
            path.add(self.backward[s], float(nb[s]))
            path.add(self.weight[s], float(nw[s]))
            path.add(self.optimizer[s], float(no[s]))
        for b in range(self.p - 1):
            path.add(self.sends[b], float(nc[b]))
            path.add(self.returns[b], float(nc[self.p - 1 + b]))
        self.paths.append(path)
        self.counts.add(count)
        row = _Lin()
        row.add(path, 1.0)
        row.add(self.step, -1.0)
        self._add(row, "<=", 0.0, f"path_{len(self.paths) - 1}")

    def warm(self, stage_of: Sequence[int], recompute: Sequence[int] = ()) -> dict[str, float]:
        """Every variable's value for a given partition and its recomputed blocks (a
        starting solution)."""
        values: dict[str, float] = {}
        for b, row in enumerate(self.y):
            for s, t in enumerate(row):
                if not isinstance(t, int):
                    values[t.name] = 1.0 if stage_of[b] <= s else 0.0
        chosen = set(recompute)
        for (b, s), var in self.r.items():
            values[var.name] = 1.0 if b in chosen and stage_of[b] == s else 0.0
        for var, terms in (self.crossing_vars + self.holder_vars + self.kept_vars + self.layer_vars + self.peak_vars
                           + self.remake_vars):
            values[var.name] = max(0.0, max(t.value(values) for t in terms))
        for per_stage, levels in self.tied_levels:
            holders = round(sum(h.value(values) for h in per_stage))
            for j, a in enumerate(levels, start=2):
                if not isinstance(a, int):
                    values[a.name] = 1.0 if holders >= j else 0.0
        for var, lin in self.defined:
            values[var.name] = lin.value(values)
        values[self.step.name] = max([0.0, *(path.value(values) for path in self.paths)])
        return {k: _clean(v) for k, v in values.items()}

    def stage_of(self, values: dict[str, float]) -> tuple[int, ...]:
        out = []
        for row in self.y:
            out.append(sum(1 for t in row if (t if isinstance(t, int) else values[t.name]) < 0.5))
        return tuple(out)

    def solution(self, values: dict[str, float]) -> Solution:
        """The partition of a solution and the blocks it recomputes."""
        stage_of = self.stage_of(values)
        return stage_of, tuple(b for b in self.candidates
                               if self.recomputes(b, stage_of[b]).value(values) > 0.5)


# [Note: a cutoff]
#
# In a search (``autopipe.partition.search``) a candidate only matters if it beats the
# best step found so far, Z. Its MIP then gets the row "step ≤ Z" and stage windows made
# for Z rather than for its own (slower) incumbent: fewer free binaries, and a MIP with no
# partition under Z is infeasible, which HiGHS proves far sooner than it closes the gap of
# a slower optimum. The MIP's step is a longest path over the paths it knows, never more
# than the true step, so "no MIP solution ≤ Z" means no partition's step is below Z: the
# candidate's lower bound is Z, exactly. Where some partition beats Z, the row does not
# bind at the optimum and the solve is the usual one.


def _beaten(best: tuple[float, Solution] | None, cutoff: float, start: float,
            solver: str, binaries: int, rounds: int = 0) -> IlpResult:
    """The answer when no partition beats ``cutoff`` ([Note: a cutoff]): the incumbent if any."""
    seconds = time.perf_counter() - start
    if best is None:
        return IlpResult(stage_of=None, status="beaten", objective_s=math.inf, lower_bound_s=cutoff,
                         model_objective_s=math.nan, seconds=seconds, solver=solver,
                         binaries=binaries, rounds=rounds)
    return IlpResult(stage_of=best[1][0], status="feasible", objective_s=best[0],
                     lower_bound_s=min(cutoff, best[0]), model_objective_s=math.nan,
                     seconds=seconds, solver=solver, binaries=binaries, rounds=rounds,
                     recompute=best[1][1])


def _within(objective: float, lower: float, gap: float, tau: float = 0.0) -> bool:
    """Whether ``objective`` is proven within ``gap`` of the bound. The MIP solvers work to
    about 1e-6 relative, and to their feasibility tolerance (1e-6) on every row in the
    model's time unit ``tau``: where one send dominates a step the step is a tenth of
    ``tau`` and a proven optimum's bound sat 1e-5 under it (a 6-node random case), so a
    few tolerances of ``tau`` count as exact too. A picosecond is always close."""
    return objective - lower <= max(gap, 1e-6) * objective + _ROW_TOLERANCES * 1e-6 * tau + 1e-12


_ROW_TOLERANCES = 4
"""Rows of a step's path whose feasibility tolerances may add up in its bound."""


def _nearby(problem: Problem, ev: Evaluation) -> list[Count]:
    cfg = problem.config
    return nearby_paths(cfg.schedule, [s.forward_s for s in ev.stages],
                        [s.backward_s for s in ev.stages], [s.backward_weight_s for s in ev.stages],
                        [s.send_s for s in ev.stages[:-1]], cfg.microbatches,
                        optimizer=ev.optimizer_s, virtual_stages=cfg.virtual_stages,
                        returns=[s.return_s for s in ev.stages[:-1]])


TIE_WINDOW = 1e-3
"""Steps within this much of the bound (or the gap, if smaller) tie ([Note: ties])."""
TIE_GAP = 1e-4
"""Relative gap of the tie-breaking solves (at most the step's gap)."""
TIE_NODES = 100
"""Most branch-and-bound nodes per tie-breaking solve."""
TIE_TIME = (2.0, 1.0)
"""The tie-breaking solves together take at most the larger of (seconds, times as long as the
step's solves took): a bound for huge models, where even a few nodes take seconds."""
_TIE_SLACK = 1e-7
"""Relative slack on a criterion once it is fixed (the solvers' feasibility tolerance)."""
_STEP_SLACK = 1e-6
"""Relative excess over the step cap that still ties: the MIP solvers do not tell steps
closer than their tolerances apart (``_within`` allows the same)."""


def _break_ties(model: _Model, problem: Problem, incumbent: Solution, cap: float, *,
                solver: str, gap: float, deadline: float, rounds: int, accept: float | None = None,
                max_nodes: int | None = TIE_NODES) -> tuple[Solution, int]:
    """The most robust partition among those with a step ≤ ``cap`` (the incumbent is one),
    by ``tie_key`` within ``TIE_BANDS``, then the fastest; see [Note: ties]. Returns it and
    the MIP solves spent.

    ``accept``: the largest step taken (default ``cap`` and the solvers' tolerance over it).

    Changes ``model``: adds its rows and variables, and the critical paths of what it finds.
    """
    tau, p = model.tau, model.p
    accept = cap * (1 + _STEP_SLACK) if accept is None else accept
    busy = []
    for s in range(p):
        lin = _Lin()
        for part in (model.forward[s], model.backward[s], model.weight[s]):
            lin.add(part, 1.0)
        busy.append(lin)
    row = _Lin()
    row.add(model.objective, 1.0)
    model._add(row, "<=", cap / tau, "tie_step")
    most, least, share = model._var("tie_most"), model._var("tie_least"), model._var("tie_share")
    ties = [("most", most, busy, 1.0), ("least", least, busy, -1.0),
            ("share", share, model.memory, 1.0),  # memory: per rank and moment with chunks
            ("share_step", share, model.step_memory, 1.0)]
    for name, var, lins, sign in ties:
        for s, lin in enumerate(lins):
            row = _Lin()
            row.add(var, sign)
            row.add(lin, -sign)
            model._add(row, ">=", 0.0, f"tie_{name}_{s}")

    def warm(solution: Solution) -> dict[str, float]:
        values = model.warm(*solution)
        values[most.name] = max(b.value(values) for b in busy)
        values[least.name] = max(0.0, min(b.value(values) for b in busy))
        values[share.name] = max(0.0, max(m.value(values) for m in model.memory + model.step_memory))
        return values

    best = incumbent
    best_ev = evaluate(problem, *best)
    key = tie_key(problem, best_ev)
    spent = 0

    def search(goal: _Lin) -> tuple[Solution, Evaluation] | None:
        """The MIP's answer for ``goal``, started from ``best``, if one within the cap."""
        nonlocal spent
        model.prob.setObjective(goal.expr())
        while spent < rounds and time.perf_counter() < deadline:
            spent += 1
            raw = _solvers.solve(model.prob, solver=solver, warm=warm(best), gap=gap, probing=model.probing,
                                 time_limit=deadline - time.perf_counter(), max_nodes=max_nodes)
            if not raw.values:
                return None
            found = model.solution(raw.values)
            ev = evaluate(problem, *found)
            if violations(problem, found[0]) or not ev.fits:
                return None
            new = [count for count in _nearby(problem, ev) if count not in model.counts]
            for count in new:
                model.add_path(count)
            if ev.objective_s <= accept:
                return found, ev
            if not new:  # the MIP's T is its step: over the cap within tolerances
                return None
            # its step was under-estimated: the new cuts exclude it; again
        return None

    # no stage is faster than its heaviest block, nor all of them than an even spread: a
    # bottleneck at this floor is the least (a vocabulary head alone in its stage)
    speeds = [d.speed for d in problem.config.devices]
    floor = max(max((b.work_s for b in problem.blocks), default=0.0) / max(speeds),
                sum(b.work_s for b in problem.blocks) / sum(speeds))
    # smallest bottleneck; then the lightest stage as heavy as it can be; then least memory
    for i, (var, sign, lins) in enumerate(((most, 1.0, busy), (least, -1.0, busy),
                                           (share, 1.0, model.memory))):
        if all(lin.is_const() for lin in lins):
            continue  # the same for every partition
        goal = _Lin()
        goal.add(var, sign)
        if sign < 0:  # keep the objective positive: the slowest stage minus the lightest
            goal.const = key[0] * (1 + TIE_BANDS[0]) / tau
        got = None if i == 0 and key[0] <= floor * (1 + _TIE_SLACK) else search(goal)
        if got is not None:
            k = tie_key(problem, got[1])
            if k[i] < key[i] - _TIE_SLACK * abs(key[i]):
                best, best_ev, key = got[0], got[1], k
        # hold this criterion within the band while the next ones (and the step) are decided
        fix = _Lin()
        fix.add(var, 1.0)
        held = key[i] + TIE_BANDS[i] * abs(key[i])  # for the lightest stage: key[1] = −least
        bound = abs(held) / tau if i < 2 else held
        model._add(fix, "<=" if sign > 0 else ">=", bound + sign * 1e-12, f"tie_hold_{i}")
    # the fastest step within the bands
    got = search(model.objective)
    if got is not None and got[1].objective_s < best_ev.objective_s:
        best = got[0]
    return best, spent


# [Note: HiGHS's optimum above its own bound]
# HiGHS 1.16 can call a MIP optimal while its dual bound lies well below the objective it
# returns, and not from a warm start alone: hypothesis found a 5-node GPipe model with
# recomputation `auto` (2026-12-06) where it answered 10.5784 "optimal" with the bound at
# 10.1932, cold as well as warm. The answer was the true best split (brute force's
# 5.2892 s), but neither HiGHS's status nor its bound proves that, and the plan came out
# "feasible" with a 3.6% gap. So where HiGHS's optimum is a true step time (its critical
# path is in the model) yet not within the gap of its bound, after a solve without a
# warm start, the rounds go on with CBC, whose answer on the same model proved the
# split optimal.


def solve_ilp(problem: Problem, *, incumbent: Sequence[int] | None = None,
              recompute: Sequence[int] | None = None, time_limit: float = 60.0,
              gap: float = 1e-4, solver: str = "highs", max_rounds: int = 60,
              break_ties: bool = True, cutoff: float | None = None) -> IlpResult:
    """Find the convex partition of ``problem``'s blocks with the shortest step that fits in memory.

    The MIP starts with the critical paths of a few extreme cost patterns and of the
    incumbent; each round solves it, simulates the answer, and adds the answer's
    critical path as a cut, until the MIP's step equals the simulated one (or the best
    simulated partition is within ``gap`` of the MIP's bound).

    Args:
        problem: blocks, values and pipeline.
        incumbent: a valid partition that fits (the DP's); it starts the solver and sets
            the stage windows. Without one the model is bigger but still exact.
        recompute: the blocks the incumbent recomputes (default: ``config.recompute``'s).
        time_limit: seconds for all MIP rounds together.
        gap: relative gap at which the search stops and calls the answer optimal.
        solver: ``highs`` or ``cbc``.
        max_rounds: most MIP solves (each adds one cut).
        break_ties: pick the most robust of the partitions that tie ([Note: ties]).
        cutoff: a step to beat (a search's best so far): below the incumbent's, the MIP
            looks only for partitions at most this fast ([Note: a cutoff]). Where it proves
            there is none, the answer is the incumbent (status ``feasible``, or ``beaten``
            without one) with the cutoff as its lower bound.
    """
    start = time.perf_counter()
    cfg = problem.config
    best: tuple[float, Solution] | None = None
    seeds = seed_paths(cfg.schedule, cfg.num_stages, cfg.microbatches, cfg.virtual_stages)
    if incumbent is not None:
        assert not violations(problem, incumbent), "the incumbent must be a valid partition"
        inc_eval = evaluate(problem, incumbent, recompute)
        assert inc_eval.fits, "the incumbent must fit in memory"
        best = (inc_eval.objective_s, (tuple(incumbent), inc_eval.recompute))
        seeds += _nearby(problem, inc_eval)
    anc = ancestors(problem)
    beat = cutoff if cutoff is not None and (best is None or cutoff < best[0]) else None
    lo, hi = windows(problem, anc, beat if beat is not None else best[0] if best else None, seeds)
    if best is not None and beat is None:
        assert fits_windows(lo, hi, list(best[1][0])), "stage windows must contain the incumbent"
    empty = any(a > b for a, b in zip(lo, hi))
    model = None if empty else _Model(problem, anc, lo, hi)
    if model is None or model.infeasible:
        if beat is not None:  # the windows alone show that nothing beats the cutoff
            return _beaten(best, beat, start, solver, 0 if model is None else model.binaries)
        return IlpResult(stage_of=None, status="infeasible", objective_s=math.inf,
                         lower_bound_s=math.inf, model_objective_s=math.nan, seconds=0.0,
                         solver=solver, binaries=0 if model is None else model.binaries, rounds=0)
    for count in sorted(set(seeds)):
        model.add_path(count)
    if beat is not None:
        row = _Lin()
        row.add(model.objective, 1.0)
        model._add(row, "<=", beat / model.tau, "cutoff")
    lower = 0.0
    status = "unsolved"
    model_objective = math.nan
    rounds = 0
    use_warm = True
    while rounds < max_rounds:
        left = time_limit - (time.perf_counter() - start)
        if left <= 0:
            break
        rounds += 1
        # an incumbent over the cutoff breaks its row: no use as a start
        warm = model.warm(*best[1]) if best is not None and use_warm and (
            beat is None or best[0] <= beat) else None
        raw = _solvers.solve(model.prob, solver=solver, warm=warm, time_limit=left, gap=gap,
                             probing=model.probing)
        if raw.status == "infeasible":
            if beat is not None and (best is None or best[0] > beat):
                return _beaten(best, beat, start, solver, model.binaries, rounds)
            if best is None:
                status = "infeasible"
            break
        if math.isfinite(raw.bound):
            lower = max(lower, raw.bound * model.tau)
        if not raw.values:
            break
        found = model.solution(raw.values)
        ev = evaluate(problem, *found)
        if violations(problem, found[0]) or not ev.fits:  # solver tolerance trouble: never keep it
            break
        if best is None or ev.objective_s < best[0]:
            best = (ev.objective_s, found)
        model_objective = raw.objective * model.tau
        # the MIP already holds this critical path: its T is the step, up to solver tolerance
        exact = ev.critical in model.counts or ev.objective_s <= model_objective * (1 + 1e-9)
        proven = _within(best[0], lower, gap, model.tau)
        if raw.status == "optimal" and exact and not proven and warm is not None and use_warm:
            # HiGHS (1.16) can map a starting solution into its presolved space wrongly and
            # then call it optimal; the bound is still right, so solve again without one
            use_warm = False
            continue
        if raw.status == "optimal" and exact and not proven and solver == "highs":
            # [Note: HiGHS's optimum above its own bound]
            solver = "cbc"
            continue
        if raw.status == "optimal" and exact:
            status = "optimal"  # the MIP's optimum is a true step time: within gap of the bound
            break
        if _within(best[0], lower, gap, model.tau):
            status = "optimal"
            break
        if raw.status != "optimal":
            status = "feasible"
            break
        for count in _nearby(problem, ev):
            if count not in model.counts:
                model.add_path(count)
    if break_ties and status == "optimal" and best is not None and model.p > 1:
        # any partition up to cap is as proven as best: prefer the most robust of them
        cap = max(best[0], lower / (1 - min(gap, TIE_WINDOW)))
        certified = (lower + 1e-12) / (1 - max(gap, 1e-6))  # the largest step _within the gap
        took = time.perf_counter() - start
        with phase("plan.ties"):
            chosen, spent = _break_ties(
                model, problem, best[1], cap, solver=solver,
                accept=max(best[0], min(cap * (1 + _STEP_SLACK), certified)),
                gap=min(gap, TIE_GAP), rounds=max_rounds - rounds,
                deadline=min(start + time_limit,
                             time.perf_counter() + max(TIE_TIME[0], TIE_TIME[1] * took)))
        rounds += spent
        if chosen != best[1]:
            best = (evaluate(problem, *chosen).objective_s, chosen)
            model_objective = model.objective.value(model.warm(*chosen)) * model.tau
    if best is not None and best[1][1] and cfg.recompute == "auto":
        # recomputation the answer does not need (free on a stage off the critical path)
        kept = prune(problem, best[1][0], best[1][1])
        if kept != best[1][1]:
            best = (evaluate(problem, best[1][0], kept).objective_s, (best[1][0], kept))
            model_objective = model.objective.value(model.warm(*best[1])) * model.tau
    seconds = time.perf_counter() - start
    if best is None:
        return IlpResult(stage_of=None, status=status if status == "infeasible" else "unsolved",
                         objective_s=math.inf, lower_bound_s=math.inf if status == "infeasible" else 0.0,
                         model_objective_s=math.nan, seconds=seconds, solver=solver,
                         binaries=model.binaries, rounds=rounds)
    if status != "optimal":
        status = "feasible"
    if beat is not None:  # the MIP's bound holds under the cutoff row; partitions over it are over the cutoff
        lower = min(lower, beat)
    lower = max(0.0, min(lower, best[0]))
    if status == "optimal" and not _within(best[0], lower, gap * (1 + 1e-6), model.tau):
        status = "feasible"  # never call a partition optimal beyond the gap we can show
    return IlpResult(stage_of=best[1][0], status=status, objective_s=best[0], lower_bound_s=lower,
                     model_objective_s=model_objective, seconds=seconds, solver=solver,
                     binaries=model.binaries, rounds=rounds, recompute=best[1][1])
