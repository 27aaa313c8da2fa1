"""The one cost model: stage times, memory and iteration time of a block → stage assignment.

Every partitioner (ILP, DP, baselines, brute force) and every check scores a
partition with ``evaluate``; the ILP encodes exactly these formulas, so its
objective equals ``evaluate(...).objective_s`` for the partition it returns.

[Note: the cost model]

    boundary b (between stages b and b+1) carries X_b bytes: every value made in a
    stage ≤ b and read in a stage > b (a skip value pays at each boundary it passes);
    sending them takes c_b = X_b / bandwidth + latency (twice the latency where a value
    crosses that goes forward only: no gradient, more than ``Config.join_bytes``), and
    their gradients come back in r_b = Y_b / bandwidth + latency, Y_b the bytes of X_b less
    those that go forward only, where a value with a gradient crosses (else nothing comes
    back: r_b = 0; [Note: what a cut sends] in ``autopipe.schedule.traffic``).

    stage s:  F_s = Σ forward / speed_s           B_s = Σ (backward input + weight) / speed_s
                                                  W_s = Σ backward weight / speed_s (part of B_s)
              memory_s = Σ_{params read} (param + grad + optimizer states)
                       + m·(X_{s-1} + Y_s)           (receive buffers, activations and gradients,
                                                      one per micro-batch: [Note: the pipeline's buffers])
                       + m·(inputs on stage 0, target on the last stage)  (the step's batch:
                                                      [Note: the batch a rank holds])
                       + max((activation bytes + X_s) × in-flight micro-batches (X_s: the
                               outputs sent, kept until their backward, but at a V's tip;
                               in flight from the schedule's order, ``Config.inflight``:
                               1F1B min(m, p−s); GPipe m; zb-h1 min(m, p))
                               + what one call holds while it runs beyond what it saves:
                               the loss's workspace on the last stage (its input and its peak
                               beyond what it saves: ``Problem.workspace``) or the stage's
                               largest of a call's scratch (a cuDNN workspace) plus the
                               gradients alive around its backward, whichever is larger
                               (``Problem.held_while_running``),
                             Σ_{params read} optimizer step's temporaries)   (the step runs when no
                               activation is held: [Note: the optimizer step's temporaries])

    iteration = the schedule's step time with these F_s, B_s, W_s, c_b and r_b — the longest
                path of its task DAG ([Note: the step time is a longest path]; only zb-h1
                runs W_s as a task of its own), which is what the simulator computes; for
                equal stages and 1F1B it is Σ_s T_s + (m−1)·max_s T_s
              + Σ_{tied params} 2(k−1)/k · bytes / all-reduce bandwidth   for a parameter held
                by k stages (its gradients are all-reduced once per step, as a ring would;
                the bandwidth measured with the runtime's backend, else the link's:
                ``Config.allreduce_s``)

    With virtual stages (interleaved-1f1b, zbv, dualpipev; [Note: chunks] in ``autopipe.partition.chunks``)
    the stages above are chunks, several per rank: a boundary between two chunks of one rank
    sends nothing, and memory holds per rank (``RankMemory``): its chunks' parameters,
    gradients, optimizer states and buffers, plus max over the moments of its program of
    Σ_c held_c · activation bytes_c (with recomputation, the chunks' reduced saved bytes,
    plus the largest of its chunks' recomputed activations alive again in a backward).
[Note: recomputation]

A stage's recomputed blocks form regions, the longest runs of consecutive blocks (in the
topological block order) that it recomputes, each one ``torch.utils.checkpoint`` call. A
region keeps for backward only its inputs, the values it reads that are made outside it,
and runs its forward again when its backward starts: a Llama layer as one region keeps
its input, 32 MiB at 4,096 tokens, instead of 760 MiB. With R_s the blocks stage s
recomputes:

    B_s       += Σ_{b ∈ R_s} forward_b / speed_s          (the B task: the input gradients
                                                         need them first)
    memory_s  −= inflight_s · Σ_{b ∈ R_s} activation_b
              += inflight_s · Σ_{v kept} bytes_v          (v is read by some b ∈ R_s and
                                                         not made in b's region; each once)
              +  max_u Σ_{b ∈ R_s ∩ u} activation_b      (alive again while the backward
                                                         runs: one micro-batch's)

where u ranges over the stage's layers ([Note: a region per layer]), or is every block
where the model has none. The last term is exact when each layer's recomputed blocks form one
region and errs high otherwise (a backward holds one region's at a time). With virtual stages a chunk recomputes
as a stage does, and its rank's memory (``RankMemory``) counts, at each moment of its
program, every chunk's held micro-batches × its reduced saved bytes, plus the largest of
its chunks' last terms (a rank runs one backward at a time; adding it at the rank's worst
moment errs high, as the last term does). The ILP takes that largest term as a variable
L_r ≥ the term of each chunk of rank r.

[Note: a region per layer]

A stage that recomputed every block as one region (the longest run) kept only its input,
but its backward brought back the activations of all its layers at once: Gemma 2 at 4,096
tokens under ``full``, 2 layers and a half on a stage, 17.7 GiB (11.1 GiB now).
torchtitan's and Megatron-LM's full recomputation checkpoints each transformer layer
alone, which keeps each layer's input (its hidden state, 32 MiB a micro-batch there) and
brings back one layer's activations at a time. So does autopipe's: where the model has
repeated layers (``Problem.node_layer``: the layers ``--granularity layer`` cuts between,
each holding modules of its own), no region spans two (``Problem.region_breaks``, the
blocks that begin another layer than the block before them ends), and a layer keeps the
values it reads from an earlier one. What runs before the first layer and after the last
forms regions of its own. A coarsened block that spans two layers recomputes as one
region, in the plan as in the runtime. Under ``auto`` too, so that recomputing every
candidate, ``full``'s choice, stays one of ``auto``'s.

[Note: a parameter's view is kept free]

A region that reads a view of a parameter made outside it (Qwen2-MoE's experts hand
``gate_up_proj.transpose(1, 2)`` to ``_grouped_mm``: 2.19 GiB at the 57B-A14B shape) keeps
that view for its backward, which holds the parameter's storage, alive anyway: nothing.
Counted as kept (for every micro-batch in flight), a region starting at the expert call
cost a stage of that shape 21 GiB it never holds, and ``full``'s chain priced a layer a
stage at 84 GiB where ``evaluate`` read 45 (found by a sweep of infeasible hints,
2026-12-07). ``Value.param_view`` marks such values (``NodeInfo.param_view``, from the
trace's views); ``evaluate``, the ILP and the chain keep them free. Sent to another stage,
the view is a copy like any value, and the cut pays for it.

[Note: recomputation in a split backward]

Under zb-h1, zbv and dualpipev torch runs a stage's backward as two actions: I, the input
gradients (``stage_backward_input``, one ``autograd.grad`` that keeps the graph), and later
W, the weight gradients (``stage_backward_weight``, one ``autograd.grad`` per parameter
group). Non-reentrant checkpointing recomputes a region once per backward call, so a region
of two linear layers ran its forward three times in the backward (torch 2.13, measured: once
in I, once per parameter group in W). The runtime runs each W under one
``torch.utils.checkpoint.GraphExecGroup`` ([Note: recomputed regions] in
``autopipe.runtime.recompute``), which recomputes once per group: then I and W each run the
recomputed forward once, and the model adds it to both (B_s and W_s each gain Σ forward_b).
Between I and W the region keeps only its inputs (I's recomputed tensors are freed as I
uses them), so the memory terms are those above. Two of torch's actions run the backward in
one call and recompute once where the model counts two: the first stage's (torch skips its
I and runs the whole backward in W) and DualPipeV's full backwards (B, written as an I and a
W back to back: [Note: DualPipeV]); there the model errs high by one recomputed forward. The ILP encodes it with one binary
per block and stage: v, made in block u and read in block d, is kept unless every block
u … d is recomputed in the stage, which is linear (w ≥ r[d] − r[k] for u ≤ k < d). A
value read REGION_SPAN blocks or more after it is made counts as kept (few rows; such
values are rare and small: position tables, masks). Counting values that a kept block
saves already (or that the stage received) errs high too. Blocks that write a tensor in
place, and the model's inputs and output (the loss), are never recomputed.
``config.recompute`` says what may be: none, the ILP's choice (``auto``), or every block
that can be (``full``).

[Note: the pipeline's buffers]

torch's ``PipelineStage`` makes, the first time it runs, a receive buffer per micro-batch
for each tensor it receives, activations from the stage before and gradients from the
stage after, and keeps them all: m·(X_{s-1} + Y_s), the step's whole batch of them
whatever the micro-batch size (66 GiB a stage for a Llama-2-70B cut into 16 with 32
micro-batches of 4 × 4,096 tokens). autopipe's stages make each when its receive is posted
and let it go once used ([Note: receive buffers made when needed] in
``autopipe._torch_pipelining``). So a stage holds:

- what it sends (X_s), kept in torch's ``fwd_cache`` until that micro-batch's backward,
  and, over a link, the copy it received (X_{s-1}), kept as long: per micro-batch in
  flight, counted with the activations (at a V's tip the two are one tensor, counted on
  the chunk that sends it, which holds it longer);
- beyond them, ``buffers``: two gradients received (2·Y_s: torch's loop holds the list
  of the last receive until it posts the next one, so the gradient before lives until
  the next is made) and one activation received (X_{s-1}: the same for the last stage,
  whose one micro-batch in flight is done when the next arrives). Counted on 2 gloo ranks
  (``tests/test_runtime_buffers.py``), the received storages alive at once are exactly
  that on both stages of a 1F1B pipeline, with 2 and 6 micro-batches; a middle stage
  holds one activation less than charged.

Y_s: the gradients' bytes; a message that goes forward only has none. The last stage's
losses, which the schedule keeps until the step ends, are cut from their graphs after
their backward, or the graph's nodes would keep every received activation alive. A
received input that the stage saves for its backward is the buffer itself, so that much is
counted twice per micro-batch in flight. Before (2026-12-04, torch's buffers, 8
micro-batches): counted storage by storage on 2 gloo ranks, an MLP of width 2,048 with
256-sample micro-batches (X = 2 MiB) held 252.1 MiB beyond its parameters on its first rank
against 250.6 predicted, 232.4 against 232.3 on its second; the U-Net 7.2 against 7.1 and
4.7 against 4.3 MiB.

[Note: the batch a rank holds]

A step's batch, all m micro-batches of it, is one tensor per input stacked on dim 0 that
the schedule splits into views: it stays alive through the step. ``autopipe train`` hands
each rank only the part it reads, the inputs to stage 0's rank and the target to the last
stage's (each replica its own share, copied out of the global batch), and moves only that
to the device; a middle rank holds none of it. So stage 0 is charged m × the model's
tensor inputs of one micro-batch (``Problem.batch_input_bytes``, the placeholders' bytes) and
the last stage m × one target (``LossCost.target_bytes``), beside the receive buffers and
for the whole step: the next step's batch is drawn before this one is dropped, while no
activation is held. A first block that saves its input for the backward saves a view of
that batch, counted again with the activations: the charge errs high by that. Counted
storage by storage (2026-12-05, ``python -m benchmarks.bench_stage_memory``; see
``docs/cost-model.md``).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from autopipe.partition.problem import REGION_SPAN, Problem
from autopipe.partition.timeline import Count, longest_path, splits_backward
from autopipe.schedule.traffic import Traffic, cut_traffic

MEMORY_HEADROOM = 1e-6
"""Every method leaves this fraction of each device free: the MIP solver's feasibility
tolerances (about 1e-6 relative) must never overflow a device, and the other methods
use the same rule so that all of them agree on what fits."""


def usable(limit: float) -> float:
    """The bytes a stage may use on a device with ``limit`` bytes."""
    return limit * (1.0 - MEMORY_HEADROOM)


@dataclass(frozen=True, slots=True, kw_only=True)
class StageCost:
    """Predicted per-micro-batch time and peak memory of one stage."""

    forward_s: float
    backward_s: float
    """Input + weight gradients."""
    backward_weight_s: float
    comm_s: float
    """Sending and receiving activations and gradients at both boundaries, per micro-batch,
    their bytes over the link (no latency): (X_{s-1} + Y_{s-1} + X_s + Y_s) / bandwidth."""
    send_s: float
    """c_s: link time to the next stage, per micro-batch (its messages' latencies included)."""
    return_s: float = 0.0
    """r_s: link time of the gradients back from the next stage, per micro-batch (Y_s: the
    values that go forward only send nothing back)."""
    recv_bytes: int
    """X_{s-1}: bytes arriving from the previous stage per micro-batch."""
    send_bytes: int
    """X_s: bytes leaving for the next stage per micro-batch."""
    params: int
    grads: int
    optimizer: int
    activations: int
    buffers: int
    limit: float
    """The device's memory, bytes (``inf`` when unlimited)."""
    batch: int = 0
    """The part of the step's batch the stage's rank holds ([Note: the batch a rank holds])."""
    library: int = 0
    """The libraries' workspaces its rank holds, on its first stage only (``Problem.library``)."""
    recompute_s: float = 0.0
    """The recomputed blocks' forward, per micro-batch, as often as the backward runs it
    (twice under a split backward: [Note: recomputation in a split backward]): part of
    ``backward_s``."""
    recompute_bytes: int = 0
    """The recomputed blocks' activations, alive again during a backward (one micro-batch's):
    part of ``activations``."""

    @property
    def busy_s(self) -> float:
        """Compute time per micro-batch: forward + backward."""
        return self.forward_s + self.backward_s

    optimizer_step: int = 0
    """Bytes the optimizer step allocates while it runs (held with no activations)."""
    workspace: int = 0
    """What the stage holds beyond its saved activations while one of its calls runs,
    alongside them: the loss's workspace on the last stage or its calls' largest scratch
    with the gradients around it (``Problem.held_while_running``)."""

    @property
    def held(self) -> int:
        """What the stage holds through the whole step: parameters, gradients, optimizer
        states, buffers, batch and the libraries' workspaces."""
        return self.params + self.grads + self.optimizer + self.buffers + self.batch + self.library

    @property
    def memory(self) -> int:
        """Total predicted peak bytes."""
        return self.held + max(self.activations + self.workspace, self.optimizer_step)

    @property
    def fits(self) -> bool:
        """Whether the stage fits its device."""
        return self.memory <= usable(self.limit)


@dataclass(frozen=True, slots=True, kw_only=True)
class Evaluation:
    """Every figure of one partition."""

    stages: tuple[StageCost, ...]
    objective_s: float
    """The iteration time: step + tied-gradient sync + the runtime's per-step work (what the
    ILP minimises)."""
    step_s: float
    """The schedule's step time (the simulator's)."""
    tied_sync_s: float
    """Per-step time to reduce gradients of parameters held by several stages."""
    critical: Count
    """Task counts of a critical path of the step."""
    optimizer_s: tuple[float, ...] = ()
    """Per stage, its optimizer step (``optimizer_steps``), part of the step."""
    ranks: tuple[RankMemory, ...] = ()
    """With virtual stages, each rank's peak memory over its chunks ([Note: chunks]); the
    limits hold per rank then. Empty with one stage per rank."""
    recompute: tuple[int, ...] = ()
    """The blocks recomputed ([Note: recomputation]), sorted."""

    @property
    def fits(self) -> bool:
        """Every stage fits its device (every rank, with virtual stages)."""
        if self.ranks:
            return all(r.fits for r in self.ranks)
        return all(s.fits for s in self.stages)

    @property
    def max_memory(self) -> int:
        """Largest stage memory (rank memory, with virtual stages)."""
        if self.ranks:
            return max(r.memory for r in self.ranks)
        return max(s.memory for s in self.stages)

    @property
    def overflow(self) -> tuple[int, ...]:
        """Stages that do not fit (with virtual stages: the chunks of ranks that do not)."""
        if self.ranks:
            return tuple(c for r in self.ranks if not r.fits for c in r.chunks)
        return tuple(i for i, s in enumerate(self.stages) if not s.fits)


@dataclass(frozen=True, slots=True, kw_only=True)
class RankMemory:
    """One rank's peak memory over the chunks it runs ([Note: chunks])."""

    chunks: tuple[int, ...]
    """The chunks (stages) the rank runs."""
    static: int
    """Parameters, gradients, optimizer states, send/receive buffers and batch of its chunks,
    and the libraries' workspaces."""
    activations: int
    """The most activation bytes its chunks hold at once: max over the moments of
    ``Config.live_sets`` of Σ held micro-batches × the chunk's bytes per micro-batch, plus
    ``recompute_bytes``, plus its chunks' ``workspace`` (the loss's, or the calls' scratch and gradients,
    summed over its chunks: an upper bound the ILP's rows share)."""
    moment: tuple[int, ...]
    """Micro-batches held per chunk (all chunks) at that peak."""
    limit: float
    optimizer_step: int = 0
    """Bytes its chunks' optimizer steps allocate (held with no activations)."""
    recompute_bytes: int = 0
    """The most activation bytes a backward of one of its chunks makes alive again (the
    largest of its chunks' recomputed blocks' activations, one micro-batch's; [Note:
    recomputation]): part of ``activations``."""

    @property
    def memory(self) -> int:
        """Total predicted peak bytes."""
        return self.static + max(self.activations, self.optimizer_step)

    @property
    def fits(self) -> bool:
        """Whether the rank fits its device."""
        return self.memory <= usable(self.limit)


def rank_memory(problem: Problem, stages: Sequence[StageCost], act: Sequence[int]) -> tuple[RankMemory, ...]:
    """Per rank, its peak memory over its chunks (``act``: saved bytes per micro-batch of each
    chunk, ``stages[c].recompute_bytes`` what its backward makes alive again); empty without
    virtual stages."""
    cfg = problem.config
    if cfg.virtual_stages == 1:
        return ()
    out = []
    for r, moments in enumerate(cfg.live_sets()):
        chunks = tuple(c for c in range(cfg.num_stages) if cfg.rank_of(c) == r)
        peak, moment = max((sum(k * a for k, a in zip(held, act)), held) for held in moments)
        again = max(stages[c].recompute_bytes for c in chunks)
        static = sum(stages[c].held for c in chunks)
        work = sum(stages[c].workspace for c in chunks)
        out.append(RankMemory(chunks=chunks, static=static, activations=peak + again + work, moment=moment,
                              limit=stages[chunks[0]].limit, recompute_bytes=again,
                              optimizer_step=sum(stages[c].optimizer_step for c in chunks)))
    return tuple(out)


def memory_scales(problem: Problem) -> list[float]:
    """Per stage, the bytes that count as "full" when comparing peak memory: the device's
    limit, else the largest limit of any stage, else the whole model's parameter and
    optimizer bytes plus one micro-batch of activations (any positive yardstick will do)."""
    limits = [float(d.memory) for d in problem.config.devices if d.memory > 0]
    if limits:
        default = max(limits)
    else:
        default = float(sum(m.total for m in problem.param_mem.values())
                        + sum(b.activation_bytes for b in problem.blocks)) or 1.0
    return [float(d.memory) if d.memory > 0 else default for d in problem.config.devices]


TIE_BANDS = (0.05, 0.25, 0.05)
"""Partitions whose steps tie are ranked by ``tie_key`` one criterion at a time, each held
within this fraction of its best value (the lightest stage loosely: it only has to do real
work); the fastest of what is left wins ([Note: ties])."""


def tie_key(problem: Problem, ev: Evaluation) -> tuple[float, float, float]:
    """How partitions with the same step are ranked, smallest first, each criterion within
    ``TIE_BANDS`` of its best (see [Note: ties] in ``autopipe.partition.ilp``).

    (the slowest stage's busy time, minus the lightest stage's, the largest share of its
    device's memory that a stage needs).
    """
    busy = [s.busy_s for s in ev.stages]
    share = max(s.memory / scale for s, scale in zip(ev.stages, memory_scales(problem)))
    if ev.ranks:  # with virtual stages the ranks hold the memory
        scales = memory_scales(problem)
        share = max(r.memory / scales[r.chunks[0]] for r in ev.ranks)
    return max(busy), -min(busy), share


def boundary_bytes(problem: Problem, stage_of: Sequence[int]) -> list[int]:
    """X_b for b = 0 … p−2: bytes crossing the boundary after stage b."""
    return [t.forward_bytes for t in traffic(problem, stage_of)]


def traffic(problem: Problem, stage_of: Sequence[int]) -> list[Traffic]:
    """Per boundary b = 0 … p−2, what a micro-batch sends over it each way ([Note: what a cut
    sends] in ``autopipe.schedule.traffic``)."""
    p = problem.config.num_stages
    crossing: list[list[tuple[int, bool, bool]]] = [[] for _ in range(max(p - 1, 0))]
    for v in problem.values:
        kind = (v.bytes, problem.forward_only(v), not v.no_grad)
        for b in range(stage_of[v.src], max(stage_of[d] for d in v.dsts)):
            crossing[b].append(kind)
    return [cut_traffic(values) for values in crossing]


def held_params(problem: Problem, stage_of: Sequence[int]) -> list[set[str]]:
    """Parameters each stage holds (reads)."""
    held: list[set[str]] = [set() for _ in range(problem.config.num_stages)]
    for i, b in enumerate(problem.blocks):
        held[stage_of[i]].update(b.params)
    return held


def recomputed(problem: Problem, recompute: Collection[int] | None) -> tuple[int, ...]:
    """The blocks a partition recomputes: ``recompute`` if given (candidates of
    ``problem``), else ``config.recompute``'s default (``full``: every candidate)."""
    if recompute is None:
        return problem.recompute_candidates() if problem.config.recompute == "full" else ()
    out = tuple(sorted(set(recompute)))
    assert set(out) <= set(problem.recompute_candidates()), "recomputed blocks must be candidates"
    return out


def regions(stage_of: Sequence[int], recompute: Collection[int],
            breaks: Collection[int] = frozenset()) -> tuple[tuple[int, ...], ...]:
    """The recomputed regions: the longest runs of consecutive recomputed blocks in one
    stage, none reaching over a block of ``breaks`` (``Problem.region_breaks``)."""
    out: list[list[int]] = []
    for b in sorted(recompute):
        if out and out[-1][-1] == b - 1 and stage_of[b - 1] == stage_of[b] and b not in breaks:
            out[-1].append(b)
        else:
            out.append([b])
    return tuple(tuple(r) for r in out)


def layers_of(size: int, breaks: Collection[int]) -> list[int]:
    """Per block, its layer for recomputation: how many of ``breaks`` lie at or before it."""
    out, k = [], 0
    for b in range(size):
        k += b in breaks
        out.append(k)
    return out


def evaluate(problem: Problem, stage_of: Sequence[int],
             recompute: Collection[int] | None = None) -> Evaluation:
    """Score a partition (``stage_of[i]`` = stage of block ``i``); see [Note: the cost model].

    ``recompute``: the blocks recomputed ([Note: recomputation]); default
    ``config.recompute``'s (every candidate for ``full``, else none). The partition is not
    checked for validity here; use ``violations`` for that.
    """
    cfg = problem.config
    p = cfg.num_stages
    fwd = [0.0] * p
    bwd = [0.0] * p
    bw_w = [0.0] * p
    act = [0] * p
    for i, b in enumerate(problem.blocks):
        s = stage_of[i]
        fwd[s] += b.forward_s
        bwd[s] += b.backward_input_s + b.backward_weight_s
        bw_w[s] += b.backward_weight_s
        act[s] += b.activation_bytes
    if problem.remake_s:  # [Note: values made again] in autopipe.trace.remade
        for s, names in enumerate(problem.remade_in(stage_of)):
            fwd[s] += sum(problem.remake_s.get(n, 0.0) for n in names)
    chosen = recomputed(problem, recompute)
    again = [0.0] * p
    live = [0] * p
    if chosen:
        _recompute(problem, stage_of, chosen, again, act, live)
    # [Note: recomputation in a split backward]: the W pass runs the forward again too
    passes = 2 if splits_backward(cfg.schedule) else 1
    cuts = traffic(problem, stage_of)
    x = [t.forward_bytes for t in cuts]
    y = [t.back_bytes for t in cuts]
    held = held_params(problem, stage_of)
    stages = []
    # a boundary between two chunks of one rank (the V's tip) is handed over in memory
    linked = [cfg.linked(b) for b in range(p - 1)]
    for s in range(p - 1):  # [Note: the pipeline's buffers]: what it sent, and a copy received, kept
        act[s] += x[s]
        if linked[s]:
            act[s + 1] += x[s]
    for s in range(p):
        dev = cfg.devices[s]
        recv = x[s - 1] if s > 0 else 0
        send = x[s] if s < p - 1 else 0
        # both ways over both links: values forward, their gradients back
        wired = (recv + y[s - 1] if s > 0 and linked[s - 1] else 0) + (
            send + y[s] if s < p - 1 and linked[s] else 0)
        mem = [problem.param_mem[q] for q in sorted(held[s])]
        stages.append(StageCost(
            forward_s=fwd[s] / dev.speed + cfg.forward_overhead_s,
            backward_s=(bwd[s] + passes * again[s]) / dev.speed + cfg.backward_overhead_s,
            backward_weight_s=(bw_w[s] + (passes - 1) * again[s]) / dev.speed, comm_s=cfg.comm_s(wired),
            send_s=cfg.comm_s(send) + cuts[s].forward_messages * cfg.send_latency_s
            if s < p - 1 and linked[s] else 0.0,
            return_s=cfg.comm_s(y[s]) + cuts[s].back_messages * cfg.send_latency_s
            if s < p - 1 and linked[s] else 0.0,
            recv_bytes=recv, send_bytes=send,
            params=sum(m.params for m in mem), grads=sum(m.grads for m in mem),
            optimizer=sum(m.optimizer for m in mem),
            activations=act[s] * cfg.inflight(s) + live[s],
            buffers=(2 * y[s] if s < p - 1 and linked[s] else 0) + (recv if s > 0 and linked[s - 1] else 0),
            batch=problem.batch_bytes(s), library=problem.library(s),
            limit=float(dev.memory) if dev.memory > 0 else math.inf,
            optimizer_step=sum(m.step for m in mem),
            workspace=problem.held_while_running(s, (i for i, t in enumerate(stage_of) if t == s)),
            recompute_s=passes * again[s] / dev.speed, recompute_bytes=live[s]))
    tied = 0.0
    for q, readers in problem.readers().items():
        tied += cfg.tied_sum_s(problem.param_bytes[q], len({stage_of[r] for r in readers}),
                               q in problem.rows_params)
    steps = optimizer_steps(problem, stage_of)
    step, critical = longest_path(cfg.schedule, [s.forward_s for s in stages],
                                  [s.backward_s for s in stages],
                                  [s.backward_weight_s for s in stages],
                                  [s.send_s for s in stages[:-1]], cfg.microbatches, steps,
                                  cfg.virtual_stages, [s.return_s for s in stages[:-1]])
    return Evaluation(stages=tuple(stages), objective_s=step + tied + cfg.step_overhead_s, step_s=step,
                      tied_sync_s=tied, critical=critical, optimizer_s=tuple(steps),
                      ranks=rank_memory(problem, stages, act), recompute=chosen)


def _recompute(problem: Problem, stage_of: Sequence[int], chosen: Sequence[int], again: list[float],
               act: list[int], live: list[int]) -> None:
    """Add the recomputed blocks' forward time, kept inputs and live bytes per stage."""
    breaks = problem.region_breaks()
    region_of = {b: k for k, region in enumerate(regions(stage_of, chosen, breaks)) for b in region}
    layer = layers_of(problem.size, breaks)
    alive: dict[tuple[int, int], int] = {}  # (stage, layer) → its recomputed activations
    for b in chosen:
        s = stage_of[b]
        again[s] += problem.blocks[b].forward_s
        act[s] -= problem.blocks[b].activation_bytes
        alive[s, layer[b]] = alive.get((s, layer[b]), 0) + problem.blocks[b].activation_bytes
    for (s, _), n in alive.items():  # [Note: a region per layer]: one layer's at a time
        live[s] = max(live[s], n)
    for v in problem.values:
        if v.param_view:  # [Note: a parameter's view is kept free]
            continue
        kept: set[int] = set()
        made_in = region_of.get(v.src)
        for d in v.dsts:
            reader = region_of.get(d)
            if reader is None or (reader == made_in and d - v.src < REGION_SPAN):
                continue
            if stage_of[d] not in kept:
                kept.add(stage_of[d])
                act[stage_of[d]] += v.bytes


def violations(problem: Problem, stage_of: Sequence[int]) -> list[str]:
    """Why a partition is not valid (empty when it is): stage range, convexity, empty
    stages, pinned blocks, non-tensor values crossing a cut. Memory is not checked."""
    p = problem.config.num_stages
    out: list[str] = []
    if len(stage_of) != problem.size:
        return [f"{len(stage_of)} stages given for {problem.size} blocks"]
    for i, s in enumerate(stage_of):
        if not 0 <= s < p:
            out.append(f"block {i} in stage {s}, outside 0…{p - 1}")
    if out:
        return out
    for v in problem.values:
        for d in v.dsts:
            if stage_of[d] < stage_of[v.src]:
                out.append(f"{v.node} (stage {stage_of[v.src]}) is read in earlier stage {stage_of[d]}")
            elif stage_of[d] > stage_of[v.src] and not v.is_tensor:
                out.append(f"non-tensor {v.node} crosses from stage {stage_of[v.src]} to {stage_of[d]}")
    real = [0] * p
    for i, b in enumerate(problem.blocks):
        real[stage_of[i]] += b.real
        if b.pin == "first" and stage_of[i] != 0:
            out.append(f"input block {i} is in stage {stage_of[i]}, not 0")
        if b.pin == "last" and stage_of[i] != p - 1:
            out.append(f"output block {i} is in stage {stage_of[i]}, not {p - 1}")
    out += [f"stage {s} is empty" for s in range(p) if real[s] == 0]
    return out


def optimizer_steps(problem: Problem, stage_of: Sequence[int]) -> list[float]:
    """Per stage, its optimizer step over the parameters it holds (tied ones in every holder)
    at the profile's rates ([Note: the optimizer step in the plan] in
    ``autopipe.profile.optimizer``), on the stage's device speed."""
    per_tensor, per_byte = problem.config.optimizer_step
    return [(len(held) * per_tensor + sum(problem.param_bytes.get(p, 0) for p in held) * per_byte)
            / dev.speed for held, dev in zip(held_params(problem, stage_of), problem.config.devices)]
