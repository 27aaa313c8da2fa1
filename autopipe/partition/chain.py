"""The topological chain of blocks, with prefix sums that price any segment [j, i) in O(1).

Partitions that cut the block order into contiguous segments (the DP, the baselines,
the memory diagnosis) are scored here with numpy vectors over the segment start ``j``,
using the same formulas as ``costs.evaluate`` (see [Note: the cost model]).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from autopipe.partition.costs import layers_of, usable
from autopipe.partition.problem import REGION_SPAN, Problem

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


class Chain:
    """Segment costs of ``problem``'s blocks in their (topological) order."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        cfg = problem.config
        n = problem.size
        self.n = n
        blocks = problem.blocks
        # recomputation ([Note: recomputation]): "full" pays its forwards again and keeps
        # what each block reads from outside the run of candidates of its layer it lies in,
        # bringing back its largest layer's activations (``_full``: upper bounds of both);
        # "auto" prices each recomputed block alone (its inputs kept, its activations alive
        # again) and recomputes the blocks that free memory so, a bound both ways (least
        # memory, no extra time)
        work = np.array([b.work_s for b in blocks], dtype=np.float64)
        self._candidates = np.zeros(n, dtype=np.bool_)
        self._inputs = np.array(problem.input_bytes(), dtype=np.float64)
        if cfg.recompute != "none":
            for b in problem.recompute_candidates():
                self._candidates[b] = True
                if cfg.recompute == "full":
                    work[b] += blocks[b].forward_s
        if cfg.recompute == "full":
            self._inputs, self._layer_act, cand_act = _full(problem, self._candidates)
            self._cand_act = np.concatenate([[0.0], np.cumsum(cand_act)])
        self._freed: dict[int, FloatArray] = {}
        self.work = np.concatenate([[0.0], np.cumsum(work)])
        self.fwd = np.concatenate([[0.0], np.cumsum([b.forward_s for b in blocks])])
        self.act = np.concatenate([[0.0], np.cumsum([float(b.activation_bytes) for b in blocks])])
        self.real = np.concatenate([[0], np.cumsum([b.real for b in blocks])])
        self.transient = np.array([float(b.transient_bytes) for b in blocks], dtype=np.float64)
        readers = problem.readers()
        single = np.zeros(n)
        step = np.zeros(n)
        self.shared: list[tuple[float, tuple[int, ...]]] = []
        self.shared_step: list[tuple[float, tuple[int, ...]]] = []
        for q, r in sorted(readers.items()):
            total = float(problem.param_mem[q].total)
            if len(r) == 1:
                single[r[0]] += total
                step[r[0]] += problem.param_mem[q].step
            else:
                self.shared.append((total, r))
                self.shared_step.append((float(problem.param_mem[q].step), r))
        self.pmem = np.concatenate([[0.0], np.cumsum(single)])
        self.pstep = np.concatenate([[0.0], np.cumsum(step)])
        """The optimizer step's temporaries ([Note: the optimizer step's temporaries])."""
        # X[i]: bytes crossing the cut in front of block i (and whether a non-tensor does)
        diff = np.zeros(n + 1)
        bad = np.zeros(n + 1, dtype=np.int64)
        for v in problem.values:
            last = max(v.dsts)
            diff[v.src + 1] += v.bytes
            diff[last + 1] -= v.bytes
            if not v.is_tensor:
                bad[v.src + 1] += 1
                bad[last + 1] -= 1
        self.cross = np.cumsum(diff)
        self.cut_ok: BoolArray = np.cumsum(bad) == 0
        firsts = [i for i, b in enumerate(blocks) if b.pin == "first"]
        lasts = [i for i, b in enumerate(blocks) if b.pin == "last"]
        self.after_first = max(firsts) + 1 if firsts else 0
        """Segments of stages > 0 must start at or after this cut."""
        self.before_last = min(lasts) if lasts else n
        """Segments of stages < p−1 must end at or before this cut."""
        self.speed = [d.speed for d in cfg.devices]
        self.limit = [usable(float(d.memory)) if d.memory > 0 else np.inf for d in cfg.devices]
        self._fitting: dict[tuple[int, int], BoolArray] = {}

    def starts(self, s: int, i: int) -> range:
        """Candidate segment starts j for stage ``s`` ending at cut ``i``."""
        p = self.problem.config.num_stages
        if s == 0:
            return range(0, 1)
        lo = max(s, self.after_first)
        hi = i - 1 if s < p - 1 or i == self.n else -1
        return range(lo, hi + 1)

    def valid(self, s: int, i: int, j: range) -> BoolArray:
        """Which segments [j, i) may be stage ``s`` (pins, non-empty, sendable cuts)."""
        p = self.problem.config.num_stages
        js = np.arange(j.start, j.stop)
        ok: BoolArray = (self.real[i] - self.real[js]) >= 1
        ok &= self.cut_ok[js]
        if not self.cut_ok[i] or (s < p - 1 and i > self.before_last):
            ok[:] = False
        return ok

    def fitting(self, s: int, i: int) -> BoolArray:
        """Which segments [j, i), j in ``starts(s, i)``, may be stage ``s`` and fit its
        memory: ``valid`` and ``memory`` within its limit. Kept: each pass of the DP asks."""
        got = self._fitting.get((s, i))
        if got is None:
            j = self.starts(s, i)
            got = self.valid(s, i, j) & (self.memory(s, i, j) <= self.limit[s])
            self._fitting[(s, i)] = got
        return got.copy()

    def comm(self, i: int, j: range) -> FloatArray:
        """Bytes in and out of segments [j, i)."""
        out: FloatArray = self.cross[j.start:j.stop] + self.cross[i]
        return out

    def time(self, s: int, i: int, j: range) -> FloatArray:
        """Per-micro-batch busy time of segments [j, i) on stage ``s``, or the link after
        them when that is slower (both are pipeline resources), each as ``evaluate`` counts
        it: a stage's per-action overheads, a link's send latency."""
        cfg = self.problem.config
        work: FloatArray = (self.work[i] - self.work[j.start:j.stop]) / self.speed[s]
        if cfg.recompute == "auto" and self._candidates.any():
            work = work + self._again(s, i, j) / self.speed[s]
        work = work + (cfg.forward_overhead_s + cfg.backward_overhead_s)
        if i < self.n:
            work = np.maximum(work, cfg.comm_s(self.cross[i]) + cfg.send_latency_s)
        return work

    def _again(self, s: int, i: int, j: range) -> FloatArray:
        """``auto``: the forward that segments [j, i) recompute to fit stage ``s``, estimated
        at the segment's average forward per byte freed (what fitting it would cost)."""
        js = slice(j.start, j.stop)
        k = self.problem.config.inflight(s)
        freed, again = self.freed(k), self._forward(k)
        over = np.maximum(self._memory(s, i, j, recompute=False) - self.limit[s], 0.0)
        can = freed[i] - freed[js]
        with np.errstate(divide="ignore", invalid="ignore"):
            out: FloatArray = np.where(over > 0, over * (again[i] - again[js]) / np.maximum(can, 1.0), 0.0)
        return out

    def memory(self, s: int, i: int, j: range) -> FloatArray:
        """Peak memory of segments [j, i) on stage ``s``."""
        return self._memory(s, i, j, recompute=True)

    def _memory(self, s: int, i: int, j: range, *, recompute: bool) -> FloatArray:
        js = slice(j.start, j.stop)
        cfg = self.problem.config
        # [Note: the pipeline's buffers]: the outputs sent and the inputs received kept until
        # their backward; beyond them two gradients received and one activation (all bytes:
        # an upper bound)
        held = (self.pmem[i] - self.pmem[js] + (2.0 * self.cross[i] if i < self.n else 0.0) + self.cross[js]
                + _shared(self.shared, i, j) + self.problem.batch_bytes(s)  # [Note: the batch a rank holds]
                + self.problem.library(s))
        act: FloatArray = cfg.inflight(s) * (self.act[i] - self.act[js] + self.comm(i, j))
        if recompute and self._candidates.any():
            freed = self.freed(cfg.inflight(s))
            act = act - (freed[i] - freed[js])
            if cfg.recompute == "full" and i > 0:  # one layer's back at a time, at most all of them
                most = np.maximum.accumulate(self._layer_act[:i][::-1])[::-1]
                act = act + np.minimum(self._cand_act[i] - self._cand_act[js], most[js])
                # a value received that a recomputed block reads is kept by its region too,
                # as evaluate counts it (beside the received copy): at most what crosses j
                act = act + cfg.inflight(s) * self.cross[js]
        step = self.pstep[i] - self.pstep[js] + _shared(self.shared_step, i, j)
        # Problem.held_while_running: the loss's workspace or the blocks' largest transient
        work = np.full(len(j), float(self.problem.workspace) if s == cfg.num_stages - 1 else 0.0)
        if len(j) and self.transient[:i].any():
            # the largest transient of blocks [j, i) for every j: a running max from i down
            suffix = np.maximum.accumulate(self.transient[:i][::-1])[::-1]
            work = np.maximum(work, suffix[js])
        mem: FloatArray = held + np.maximum(act + work, step)
        return mem

    def freed(self, inflight: int) -> FloatArray:
        """Prefix sums of the bytes recomputation frees per block on a stage holding
        ``inflight`` micro-batches."""
        if inflight not in self._freed:
            act = np.array([float(b.activation_bytes) for b in self.problem.blocks])
            if self.problem.config.recompute == "full":  # the alive again term: ``_memory``
                freed = np.where(self._candidates, inflight * (act - self._inputs), 0.0)
            else:
                freed = np.maximum(np.where(self._candidates, inflight * (act - self._inputs) - act, 0.0), 0.0)
            self._freed[inflight] = np.concatenate([[0.0], np.cumsum(freed)])
        return self._freed[inflight]

    def _forward(self, inflight: int) -> FloatArray:
        """Prefix sums of the forward of the blocks that ``freed`` counts."""
        key = -inflight - 1
        if key not in self._freed:
            freed = np.diff(self.freed(inflight))
            fwd = np.array([b.forward_s for b in self.problem.blocks])
            self._freed[key] = np.concatenate([[0.0], np.cumsum(np.where(freed > 0, fwd, 0.0))])
        return self._freed[key]

    def stage_of(self, cuts: list[int]) -> list[int]:
        """Block → stage for segment ends ``cuts`` (one per stage, the last is ``n``)."""
        out = []
        start = 0
        for s, end in enumerate(cuts):
            out += [s] * (end - start)
            start = end
        return out


def _full(problem: Problem, candidates: BoolArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """``full`` recomputation's prices per block, upper bounds of ``costs.evaluate``'s in any
    segment: the bytes a candidate keeps (what it reads from another run of candidates
    than its own, runs ending at every other block and at ``Problem.region_breaks``, or
    from ``REGION_SPAN`` blocks back; what it reads from an earlier stage ``Chain._memory``
    adds, at most the bytes crossing the segment's first cut), its layer's candidates'
    activations (the most its stage can bring back at once from that layer), and its own
    activations where it is a candidate."""
    breaks = problem.region_breaks()
    run = np.cumsum([b in breaks or not candidates[b] or (b > 0 and not candidates[b - 1])
                     for b in range(problem.size)])
    kept = np.zeros(problem.size)
    for v in problem.values:
        if v.param_view:  # [Note: a parameter's view is kept free]
            continue
        for d in v.dsts:
            if candidates[d] and (run[d] != run[v.src] or not candidates[v.src] or d - v.src >= REGION_SPAN):
                kept[d] += v.bytes
    act = np.where(candidates, [float(b.activation_bytes) for b in problem.blocks], 0.0)
    layer = np.array(layers_of(problem.size, breaks))
    per_layer = np.bincount(layer, weights=act)
    return kept, per_layer[layer], act


def _shared(shared: list[tuple[float, tuple[int, ...]]], i: int, j: range) -> FloatArray:
    """Bytes of parameters read by several blocks that segments [j, i) hold."""
    out: FloatArray = np.zeros(len(j))
    for total, readers in shared:
        # held when some reader r has j <= r < i: j at or below the last reader before i
        last = -1
        for r in readers:
            if r < i:
                last = r
        if last >= j.start:
            out[: last - j.start + 1] += total
    return out
