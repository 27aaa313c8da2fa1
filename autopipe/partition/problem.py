"""Problem: what the partitioners see — blocks of nodes, the values between them, the devices.

A Problem is built from a Profile with one block per node (``from_profile``); coarsening
(``autopipe.partition.coarsen``) merges nodes into bigger blocks and gives another Problem
of the same type, so every partitioner works on either.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from autopipe._malloc import ZERO_PAGES_MIN
from autopipe.errors import PlanError
from autopipe.partition.chunks import Live, chunk_inflight, live_sets, rank_of
from autopipe.partition.timeline import splits_backward
from autopipe.plan_format import Device
from autopipe.profile.gradients import gradients_around
from autopipe.profile.memory import ParamMemory, embedding_grad_bytes, param_memory
from autopipe.profile.profile import NodeProfile, Profile
from autopipe.schedule.actions import V_SHAPED, check_schedule, schedule_order
from autopipe.trace.graph import param_readers, tied_embeddings

SCHEDULES = ("1f1b", "gpipe", "zb-h1", "interleaved-1f1b", "zbv", "dualpipev")
"""Schedules whose iteration time and memory the planner models exactly (one stage per rank,
or ``virtual_stages`` chunks per rank for ``interleaved-1f1b``, ``zbv`` and ``dualpipev``;
[Note: chunks], [Note: DualPipeV])."""
REGION_SPAN = 64
"""A value read more than this many blocks after the block that makes it counts as kept
by any recomputed region that reads it, even one that makes it too (it keeps the ILP's
rows few; such values are rare and small: position tables, masks)."""
REMAKE = ("auto", "all", "none")
"""Which values that depend on no input a reading stage makes again instead of receiving
([Note: values made again] in ``autopipe.trace.remade``): each where that is faster, all, or
none (every value is sent, as plans before the choice)."""
RECOMPUTE = ("none", "auto", "full")
"""What a partition may recompute ([Note: recomputation] in ``autopipe.partition.costs``):
nothing, the blocks the ILP chooses, or every block that can be."""

JOIN_BYTES = 1 << 20
"""Where the send latency is not known (0): a value without a gradient of up to this many
bytes crosses a cut in the message of the values with one, its gradient of zeros coming
back with theirs, and a larger one goes forward only, in a message of its own
(``Config.join_bytes``; [Note: values without a gradient] in ``autopipe.trace.no_grad``;
[Note: one message per cut] in ``autopipe.runtime.packing``)."""

_ELEMENT_SIZE = {"float64": 8, "float32": 4, "tf32": 4, "float16": 2, "bfloat16": 2,
                 "float8_e4m3fn": 1, "float8_e5m2": 1}


MULTI_CHUNK = ("interleaved-1f1b", "zbv", "dualpipev")
"""Schedules the planner gives several chunks per rank (loop-around placement; zbv and
dualpipev: exactly 2, V-shaped)."""


def check_virtual_stages(schedule: str, num_stages: int, virtual_stages: int) -> None:
    """Check a chunk count for a schedule: V ≥ 1, V > 1 only for ``MULTI_CHUNK`` schedules,
    and the same number of chunks on every rank, at least two ranks.

    Raises:
        PlanError: the counts do not fit.
    """
    if isinstance(virtual_stages, bool) or not isinstance(virtual_stages, int) or virtual_stages < 1:
        raise PlanError(f"virtual_stages = {virtual_stages!r}", hint="use a positive number, e.g. 2")
    if virtual_stages == 1:
        return
    if schedule not in MULTI_CHUNK:
        raise PlanError(f"schedule {schedule} runs one stage per rank, got {virtual_stages} virtual stages",
                        hint=f"use --schedule {MULTI_CHUNK[0]} for several chunks per rank")
    if schedule in V_SHAPED and virtual_stages != 2:
        raise PlanError(f"schedule {schedule} runs exactly 2 chunks per rank, got {virtual_stages}",
                        hint="use --virtual-stages 2 (the default)")
    if num_stages % virtual_stages or num_stages // virtual_stages < 2:
        raise PlanError(f"{num_stages} chunks cannot run as {virtual_stages} per rank on at least 2 ranks",
                        hint="use at least 2 stages (ranks)")


def ring_allreduce_per_byte(ranks: int, bandwidth: float) -> float:
    """Seconds per byte of a ring all-reduce over ``ranks`` ranks at ``bandwidth`` bytes/s:
    2(k−1)/k of the bytes pass through each rank (0 for one rank or an infinite bandwidth)."""
    if ranks < 2:
        return 0.0
    return 2 * (ranks - 1) / ranks / bandwidth


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The pipeline a partition is made for."""

    num_stages: int
    """Number of pipeline stages ``p`` (with virtual stages: of chunks, ranks × ``virtual_stages``)."""
    microbatches: int
    """Micro-batches per optimizer step ``m``."""
    schedule: str
    """``1f1b``, ``gpipe``, ``zb-h1``, ``interleaved-1f1b``, ``zbv`` or ``dualpipev``."""
    devices: tuple[Device, ...]
    """One device per stage (memory limit and speed); with virtual stages, per chunk: the
    device of the chunk's rank."""
    link_bandwidth: float
    """Bytes/s between neighbouring stages, one direction; ``math.inf`` makes sends free."""
    optimizer_step: tuple[float, float] = (0.0, 0.0)
    """Seconds of one optimizer step per parameter tensor and per parameter byte (the
    profile's rates for the plan's optimizer): each stage pays it once per step."""
    forward_overhead_s: float = 0.0
    """The runtime's own work around each forward action (the profile's ``runtime``)."""
    backward_overhead_s: float = 0.0
    """The same around each backward action."""
    send_latency_s: float = 0.0
    """Per send of one micro-batch's boundary tensors, beyond bytes / bandwidth."""
    step_overhead_s: float = 0.0
    """Per step and rank (splitting the batch, clearing state): every rank pays it once."""
    allreduce_bandwidth: float = 0.0
    """Bytes/s of an all-reduce between two ranks (seconds = ``allreduce_latency_s`` + bytes /
    this), as measured with the runtime's backend (``autopipe.runtime.calibrate``); 0:
    ``link_bandwidth``, what a ring all-reduce over the links would reach."""
    allreduce_latency_s: float = 0.0
    """Fixed seconds of an all-reduce between two ranks; a ring over k ranks pays it k − 1 times."""
    rows_sum_bandwidth: float = 0.0
    """Bytes/s of the sum of a tied embedding's gradient over its two holders, one of them
    sending only the rows a step wrote (``Problem.rows_params``; [Note: a tied embedding's
    rows] in ``autopipe.runtime.sum_over``): the other's whole copy crosses once. 0: priced
    as the all-reduce."""
    rows_sum_latency_s: float = 0.0
    """Fixed seconds of that sum."""
    virtual_stages: int = 1
    """Chunks per rank ([Note: chunks] in ``autopipe.partition.chunks``): ``num_stages``
    counts the chunks, chunk c runs on rank c mod ``num_ranks`` (zbv, dualpipev: in a V, ``rank_of``),
    and memory limits hold per rank."""
    recompute: str = "none"
    """Activation recomputation (``RECOMPUTE``): ``none``; ``auto``, each block's choice is a
    decision of the partition; ``full``, every block that can be is recomputed."""
    remake: str = "auto"
    """Which values a reading stage makes again (``REMAKE``)."""

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise PlanError(f"unknown schedule {self.schedule!r}",
                            hint=f"choose one of {', '.join(SCHEDULES)}")
        if self.num_stages < 1:
            raise PlanError(f"num_stages = {self.num_stages}", hint="use at least 1 stage")
        if self.microbatches < 1:
            raise PlanError(f"microbatches = {self.microbatches}", hint="use at least 1 micro-batch")
        if len(self.devices) != self.num_stages:
            raise PlanError(f"{len(self.devices)} devices for {self.num_stages} stages",
                            hint="give one device per stage")
        if not self.link_bandwidth > 0:
            raise PlanError(f"link bandwidth {self.link_bandwidth} is not positive",
                            hint="give bytes/s, e.g. 25e9")
        check_virtual_stages(self.schedule, self.num_stages, self.virtual_stages)
        check_schedule(self.schedule, self.num_ranks, self.microbatches, self.virtual_stages)  # rounds
        if self.recompute not in RECOMPUTE:
            raise PlanError(f"unknown recompute mode {self.recompute!r}",
                            hint=f"choose one of {', '.join(RECOMPUTE)}")
        if self.remake not in REMAKE:
            raise PlanError(f"unknown remake mode {self.remake!r}", hint=f"choose one of {', '.join(REMAKE)}")

    @property
    def num_ranks(self) -> int:
        """Ranks (devices) of the pipeline: the stages, or the chunks / ``virtual_stages``."""
        return self.num_stages // self.virtual_stages

    def rank_of(self, stage: int) -> int:
        """The rank that runs ``stage`` (a chunk, with virtual stages)."""
        return rank_of(stage, self.num_ranks, self.schedule)

    def linked(self, boundary: int) -> bool:
        """Whether the boundary after stage ``boundary`` joins two ranks (at a V's tip one rank
        hands the tensors over in memory: no send)."""
        return self.rank_of(boundary) != self.rank_of(boundary + 1)

    def live_sets(self) -> tuple[tuple[Live, ...], ...]:
        """Per rank, the moments whose held micro-batches per chunk bound its activation
        memory (``autopipe.partition.chunks.live_sets``)."""
        return live_sets(self.schedule, self.num_ranks, self.microbatches, self.virtual_stages)

    def inflight(self, stage: int) -> int:
        """Micro-batches whose activations stage ``stage`` holds at its peak.

        Counted along the stage's program (``autopipe.schedule.schedule_order``): a
        micro-batch is held from its F to its last backward action (B, or W when the
        schedule splits it off). 1F1B: stage s runs p−s forwards before its first
        backward, so it holds min(m, p−s); GPipe runs all m forwards first; zb-h1 runs
        p−1−s forwards first and delays each W by s backwards, so every stage holds min(m, p).
        """
        if self.virtual_stages > 1:  # a chunk's own peak ([Note: chunks])
            return chunk_inflight(self.schedule, self.num_ranks, self.microbatches,
                                  self.virtual_stages)[stage]
        return _inflight(self.schedule, self.num_stages, self.microbatches)[stage]

    @property
    def join_bytes(self) -> float:
        """The most bytes of a value without a gradient that cross a cut in the message of
        those with one: what one more message's latency would move at the link's bandwidth
        (a value beyond it costs less alone, forward only, than its zeros back), or
        ``JOIN_BYTES`` where the latency is not known."""
        if math.isinf(self.link_bandwidth):
            return math.inf
        if self.send_latency_s <= 0:
            return float(JOIN_BYTES)
        return self.send_latency_s * self.link_bandwidth

    def comm_s(self, nbytes: float) -> float:
        """Seconds to move ``nbytes`` over one link."""
        return 0.0 if math.isinf(self.link_bandwidth) else nbytes / self.link_bandwidth

    def tied_sum_s(self, nbytes: float, ranks: int, rows: bool) -> float:
        """Seconds to sum a tied gradient of ``nbytes`` over ``ranks`` holders; ``rows``: a
        pair of which one holds an embedding's gradient (``Problem.rows_params``), priced on
        the rows line where measured."""
        if rows and ranks == 2 and self.rows_sum_bandwidth > 0:
            return self.rows_sum_latency_s + nbytes / self.rows_sum_bandwidth
        return self.allreduce_s(nbytes, ranks)

    def allreduce_s(self, nbytes: float, ranks: int) -> float:
        """Seconds to all-reduce ``nbytes`` over ``ranks`` ranks: a ring moves 2(k−1)/k of the
        bytes through each rank (once, for two ranks), at ``allreduce_bandwidth``, and pays
        ``allreduce_latency_s`` k − 1 times."""
        bw = self.allreduce_bandwidth if self.allreduce_bandwidth > 0 else self.link_bandwidth
        if ranks < 2 or math.isinf(bw):
            return 0.0
        return nbytes * ring_allreduce_per_byte(ranks, bw) + (ranks - 1) * self.allreduce_latency_s


@dataclass(frozen=True, slots=True, kw_only=True)
class Block:
    """Nodes that always share a stage."""

    nodes: tuple[str, ...]
    """Node names, in topological order."""
    forward_s: float
    backward_input_s: float
    backward_weight_s: float
    activation_bytes: int
    params: tuple[str, ...]
    """Parameters any node of the block reads (owned or shared), sorted."""
    real: int
    """Number of nodes that compute something: not placeholders, and the output only where
    the loss runs there."""
    pin: str = ""
    """``"first"``: must be in stage 0 (model inputs); ``"last"``: in the last stage (the output)."""
    recomputable: bool = False
    """Whether the block's forward may run again in its backward: it computes something and
    no node of it writes a tensor in place (a second run would write it twice)."""
    transient_bytes: int = 0
    """The most one call of its nodes holds on top of the stage's activations while it
    runs: the call's scratch (``NodeProfile.scratch_bytes``, [Note: a call's scratch] in
    ``autopipe.profile._scratch``) plus the gradients alive around its backward
    ([Note: gradients around a backward call] in ``autopipe.profile.gradients``)."""

    @property
    def work_s(self) -> float:
        """Forward + backward seconds on the profiled device."""
        return self.forward_s + self.backward_input_s + self.backward_weight_s


@dataclass(frozen=True, slots=True, kw_only=True)
class Value:
    """A node's output read by other blocks: it crosses every boundary between producer and last reader."""

    node: str
    """The producing node."""
    src: int
    """Producing block."""
    dsts: tuple[int, ...]
    """Reading blocks (other than ``src``), sorted."""
    bytes: int
    is_tensor: bool
    order_only: bool = False
    """Nothing is sent: ``src`` must only run no later than ``dsts``, as an in-place write
    orders them ([Note: in-place writes order the graph] in ``autopipe.trace.aliasing``)."""
    remade: tuple[str, ...] = ()
    """Nothing is sent (``bytes`` is 0): a reading stage that ``src``'s does not hold runs
    these nodes again, the producing node and what it reads, in node order, each
    ``Problem.remake_s`` ([Note: values made again] in ``autopipe.trace.remade``)."""
    no_grad: bool = False
    """The value surely has no gradient (``NodeProfile.no_grad``): nothing of it comes back
    if it goes forward only (``Problem.forward_only``)."""
    param_view: bool = False
    """The value is a view of a parameter's storage (``NodeProfile.param_view``): a
    recomputed region keeps it free ([Note: a parameter's view is kept free] in
    ``autopipe.partition.costs``); sent, it is a copy like any other."""
    joined: tuple[int, ...] = ()
    """Readers (of ``dsts``) that must share ``src``'s stage: those of a parameter's view in
    the module that makes it ([Note: a parameter's view stays with its readers] in
    ``autopipe.partition.coarsen``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Problem:
    """A partition problem: blocks in topological order, the values between them, the pipeline."""

    blocks: tuple[Block, ...]
    values: tuple[Value, ...]
    param_bytes: dict[str, int]
    """Every parameter → bytes."""
    param_mem: dict[str, ParamMemory]
    """Every parameter → its parameter, gradient and optimizer-state bytes."""
    config: Config
    node_module: dict[str, str] = field(default_factory=dict)
    """Node name → owning module path (for baselines and reports)."""
    node_order: tuple[str, ...] = ()
    """Every node name in the profile's topological order."""
    node_call: dict[str, str] = field(default_factory=dict)
    """Node name → what it runs, its own module's path left out (``call_function
    aten.addmm.default weight,bias``): equal in two layers built alike (``node_call``)."""
    remake_s: dict[str, float] = field(default_factory=dict)
    """Node name → forward seconds, for the nodes that a stage may run again (``Value.remade``)."""
    workspace: int = 0
    """Bytes the last stage holds while the loss runs, beyond its saved activations
    (``LossCost.workspace_bytes``; [Note: the loss is part of the last stage]); see
    ``held_while_running``."""
    batch_input_bytes: int = 0
    """Bytes of one micro-batch's tensor inputs (the placeholders'): stage 0's rank holds
    the batch's (``batch_bytes``)."""
    batch_target_bytes: int = 0
    """Bytes of one micro-batch's target (``LossCost.target_bytes``): the last stage's rank
    holds the batch's."""
    library_bytes: int = 0
    """Device memory each rank's libraries hold beyond tensors (``Profile.library_bytes``,
    [Note: the libraries' workspaces] in ``autopipe.profile.libraries``); see ``library``."""
    rows_params: frozenset[str] = frozenset()
    """Tied parameters whose gradient, split over two stages, is summed with one side
    sending only the rows a step wrote: read by exactly two nodes, one of them an
    embedding reading it alone, on CPU ranks as ``fuse_weight_grads`` fuses it ([Note: a
    tied embedding's rows] in ``autopipe.runtime.sum_over``); priced by ``Config.tied_sum_s``."""
    node_layer: dict[str, int] = field(default_factory=dict)
    """Node name → the layer it runs in: 0 before the model's first repeated layer, 1…L
    the layers, L+1 after the last (``autopipe.partition.layers.node_layers``). Empty where
    no layers were found. No recomputed region spans two layers (``region_breaks``)."""

    def __post_init__(self) -> None:
        for v in self.values:
            assert all(d > v.src for d in v.dsts), f"value {v.node} goes backwards in block order"

    @property
    def size(self) -> int:
        """Number of blocks."""
        return len(self.blocks)

    def forward_only(self, value: Value) -> bool:
        """Whether ``value`` crosses a cut forward only, in a message of its own: it has no
        gradient and more than ``Config.join_bytes`` (the plan marks its sends so,
        ``Send.forward_only``, and the runtime does as marked)."""
        return value.no_grad and value.bytes > self.config.join_bytes

    def held_while_running(self, stage: int, blocks: Iterable[int]) -> int:
        """What ``stage``, holding ``blocks``, holds at most beyond its saved activations while
        one of its calls runs: the loss's workspace on the last stage, or the largest
        ``Block.transient_bytes`` of its blocks (a call's scratch and the gradients around
        it), whichever is larger (one call runs at a time)."""
        loss = self.workspace if stage == self.config.num_stages - 1 else 0
        return max(loss, max((self.blocks[b].transient_bytes for b in blocks), default=0))

    def batch_bytes(self, stage: int) -> int:
        """The part of a step's batch that ``stage`` holds through the step, one piece per
        micro-batch: the inputs on stage 0, the target on the last stage ([Note: the batch
        a rank holds] in ``autopipe.partition.costs``)."""
        m = self.config.microbatches
        return (m * self.batch_input_bytes if stage == 0 else 0) + (
            m * self.batch_target_bytes if stage == self.config.num_stages - 1 else 0)

    def library(self, stage: int) -> int:
        """The libraries' workspaces charged to ``stage``: all of them to the first stage
        (chunk) its rank runs, none to its rank's other chunks, so that a rank holds them
        once ([Note: the libraries' workspaces] in ``autopipe.profile.libraries``). In
        every layout chunk r < ranks is rank r's first."""
        return self.library_bytes if stage < self.config.num_ranks else 0

    @property
    def num_real(self) -> int:
        """Number of blocks that hold a computing node (the most stages possible)."""
        return sum(1 for b in self.blocks if b.real > 0)

    def edges(self) -> list[tuple[int, int]]:
        """Distinct block edges ``(u, v)``, ``u < v``."""
        return sorted({(v.src, d) for v in self.values for d in v.dsts})

    def readers(self) -> dict[str, tuple[int, ...]]:
        """Parameter → blocks that read it (sorted)."""
        out: dict[str, list[int]] = {}
        for i, b in enumerate(self.blocks):
            for p in b.params:
                out.setdefault(p, []).append(i)
        return {p: tuple(r) for p, r in out.items()}

    def remade_in(self, stage_of: Sequence[int]) -> list[tuple[str, ...]]:
        """Per stage, the nodes of earlier stages it runs again to make the values it reads
        from them ([Note: values made again] in ``autopipe.trace.remade``), in node order."""
        out: list[set[str]] = [set() for _ in range(self.config.num_stages)]
        for v in self.values:
            if v.remade:
                for d in v.dsts:
                    if stage_of[d] != stage_of[v.src]:
                        out[stage_of[d]].update(v.remade)
        order = {n: i for i, n in enumerate(self.node_order)}
        return [tuple(sorted(names, key=lambda n: order.get(n, 0))) for names in out]

    def remakes(self) -> list[tuple[float, tuple[tuple[int, int], ...]]]:
        """The nodes a stage may run again, grouped by the values made from them: per group,
        its nodes' forward seconds (``remake_s``) and the (producer, reader) block pairs of
        those values. A stage runs a group again when it holds one of its readers and not
        that reader's producer, which is exactly what ``remade_in`` lists ([Note: values
        made again] in ``autopipe.trace.remade``)."""
        pairs: dict[str, set[tuple[int, int]]] = {}
        for v in self.values:
            for n in v.remade:
                pairs.setdefault(n, set()).update((v.src, d) for d in v.dsts)
        groups: dict[tuple[tuple[int, int], ...], list[float]] = {}
        for n, ps in pairs.items():
            groups.setdefault(tuple(sorted(ps)), []).append(self.remake_s.get(n, 0.0))
        return [(math.fsum(times), ps) for ps, times in sorted(groups.items())]

    def input_bytes(self) -> list[int]:
        """Per block, the bytes of the values it reads from other blocks, each counted once:
        what a recomputed block keeps for its backward (a parameter's view free: [Note: a
        parameter's view is kept free] in ``autopipe.partition.costs``)."""
        out = [0] * self.size
        for v in self.values:
            for d in v.dsts:
                out[d] += 0 if v.param_view else v.bytes
        return out

    def region_breaks(self) -> frozenset[int]:
        """Blocks that begin a recomputed region whatever the block before them does: each
        whose first node runs in another layer than the last node of the block before it
        ([Note: a region per layer] in ``autopipe.partition.costs``). Empty where no layers
        are known: regions are the longest runs."""
        if self.config.recompute == "none" or not self.node_layer:
            return frozenset()
        layer = self.node_layer
        return frozenset(b for b in range(1, self.size)
                         if layer.get(self.blocks[b].nodes[0]) != layer.get(self.blocks[b - 1].nodes[-1]))

    def recompute_candidates(self) -> tuple[int, ...]:
        """Blocks that may be recomputed under ``config.recompute`` (none: no block): they
        compute something, write nothing in place, and are neither an input nor the output.

        With virtual stages each chunk recomputes as a stage does ([Note: chunks] in
        ``autopipe.partition.chunks``); under a schedule that splits the backward (zb-h1, zbv,
        dualpipev) both passes recompute ([Note: recomputation in a split backward] in
        ``autopipe.partition.costs``)."""
        cfg = self.config
        if cfg.recompute == "none":
            return ()
        return tuple(i for i, b in enumerate(self.blocks) if b.recomputable and not b.pin and b.real)

    def with_config(self, config: Config) -> Problem:
        """The same graph for another pipeline."""
        return replace(self, config=config)


@functools.lru_cache(maxsize=256)
def _inflight(schedule: str, p: int, m: int) -> tuple[int, ...]:
    """Per stage, the most micro-batches held at once along its program. Actions run one
    at a time on a rank, so the order alone decides it (the simulator finds the same peak)."""
    order = schedule_order(schedule, p, m)
    release = "W" if order.split_backward else "B"
    peak = [0] * p
    for program in order.ranks:
        held = 0
        for a in program:
            held += 1 if a.kind == "F" else -1 if a.kind == release else 0
            peak[a.stage] = max(peak[a.stage], held)
    return tuple(peak)


def element_size(dtype: str) -> int:
    """Bytes per element of a dtype name (parameters and gradients are kept in it).

    Raises:
        PlanError: an unknown dtype.
    """
    key = dtype.removeprefix("torch.")
    if key not in _ELEMENT_SIZE:
        raise PlanError(f"unknown parameter dtype {dtype!r}",
                        hint=f"use one of {', '.join(_ELEMENT_SIZE)}")
    return _ELEMENT_SIZE[key]


def from_profile(profile: Profile, config: Config, *, optimizer: str = "adam",
                 dtype: str | None = None) -> Problem:
    """One block per profiled node.

    Model inputs (placeholders) are pinned to stage 0, because the pipeline feeds
    inputs to the first stage only; a later reader receives them passed through.
    The output node is pinned to the last stage; it carries the loss where the profile
    has one.

    Args:
        profile: per-node costs.
        config: the pipeline.
        optimizer: for optimizer-state bytes (``adam``, ``sgd``, ...).
        dtype: parameter dtype; default the profile's.

    Raises:
        PlanError: the profile has no nodes.
    """
    if not profile.nodes:
        raise PlanError("the profile has no nodes", hint="profile the model again")
    esize = element_size(dtype or profile.dtype)
    index = {n.name: i for i, n in enumerate(profile.nodes)}
    readers: dict[str, set[int]] = {}
    for src, dst, _ in profile.edges:
        if index[src] >= index[dst]:
            raise PlanError(f"profile edge {src}→{dst} goes against the node order",
                            hint="re-profile the model; nodes must be in topological order")
        readers.setdefault(src, set()).add(index[dst])
    ordered: dict[str, set[int]] = {}
    for a, b in profile.order:
        if index[a] >= index[b]:
            raise PlanError(f"profile order {a}→{b} goes against the node order",
                            hint="re-profile the model; nodes must be in topological order")
        ordered.setdefault(a, set()).add(index[b])
    param_bytes = dict(profile.params)
    for n in profile.nodes:
        for p in (*n.params, *n.shared_params):
            if p not in param_bytes:
                param_bytes[p] = n.param_bytes if p in n.params and len(n.params) == 1 else 0
    # CPU ranks step Adam fused, in place ([Note: the optimizer step's temporaries])
    fused = bool(config.devices) and all(d.is_cpu for d in config.devices)
    # what a CPU rank accumulates row by row ([Note: weight gradients accumulated in place])
    by_rows = fused and esize == 4 and optimizer != "none" and not splits_backward(config.schedule)
    zero_page_grads = _embedding_grads(profile, param_bytes, config.microbatches) if by_rows else {}
    blocks: list[Block] = []
    values: list[Value] = []
    loss = profile.loss
    # CPU ranks add embeddings' and linear layers' weight gradients in place, as they
    # accumulate rows ([Note: weight gradients accumulated in place])
    around = gradients_around(profile, in_place=fused and not splits_backward(config.schedule))
    remade = _remade(profile, config)
    for i, n in enumerate(profile.nodes):
        pin = "first" if n.op == "placeholder" else "last" if n.op == "output" else ""
        # the loss runs on the last stage, after its forward: charged to the output node
        # ([Note: the loss is part of the last stage])
        extra = loss if n.op == "output" and loss is not None else None
        blocks.append(Block(
            nodes=(n.name,), forward_s=n.forward_s + (extra.forward_s if extra else 0.0),
            backward_input_s=n.backward_input_s + (extra.backward_s if extra else 0.0),
            backward_weight_s=n.backward_weight_s,
            activation_bytes=n.activation_bytes + (extra.activation_bytes if extra else 0),
            params=tuple(sorted(set(n.params) | set(n.shared_params))),
            # the loss computes: a last stage may run it alone ([Note: the loss is part of
            # the last stage])
            real=0 if n.op == "placeholder" or (n.op == "output" and extra is None) else 1, pin=pin,
            # a recomputed embedding keeps autograd's gradient, which is written whole
            recomputable=n.op not in ("placeholder", "output") and not writes_in_place(n.target)
            and not zero_page_grads.keys() & set(n.params),
            transient_bytes=n.scratch_bytes + around[n.name]))
        dsts = readers.get(n.name)
        if dsts:
            # a non-tensor model input is a constant baked into the stages, and a value made
            # again is made by its readers ([Note: values made again]): neither is sent
            free = n.op == "placeholder" and not n.is_tensor
            values.append(Value(node=n.name, src=i, dsts=tuple(sorted(dsts)),
                                bytes=0 if free or n.name in remade else n.output_bytes,
                                is_tensor=n.is_tensor or free or n.name in remade,
                                remade=remade.get(n.name, ()), no_grad=n.no_grad,
                                param_view=n.param_view,
                                # [Note: a parameter's view stays with its readers]
                                joined=tuple(sorted(d for d in dsts if profile.nodes[d].module == n.module))
                                if n.param_view else ()))
        after = ordered.get(n.name, set()) - (dsts or set())
        if after:
            values.append(Value(node=n.name, src=i, dsts=tuple(sorted(after)), bytes=0,
                                is_tensor=True, order_only=True))
    mem = {p: param_memory(b, element_size=esize, optimizer=optimizer, fused=fused)
           for p, b in param_bytes.items()}
    for p, grads in zero_page_grads.items():
        mem[p] = replace(mem[p], grads=grads)
    return Problem(blocks=tuple(blocks), values=tuple(values), param_bytes=param_bytes,
                   param_mem=mem, config=config,
                   node_module={n.name: n.module for n in profile.nodes},
                   node_order=tuple(n.name for n in profile.nodes),
                   node_call={n.name: node_call(n) for n in profile.nodes},
                   remake_s={n.name: n.forward_s for n in profile.nodes if n.name in remade},
                   workspace=loss.workspace_bytes if loss is not None else 0,
                   batch_input_bytes=sum(n.output_bytes for n in profile.nodes if n.op == "placeholder" and n.is_tensor),
                   batch_target_bytes=loss.target_bytes if loss is not None else 0,
                   library_bytes=profile.library_bytes,
                   rows_params=tied_embeddings(profile.nodes, NodeProfile.is_embedding) if by_rows else frozenset())


def _remade(profile: Profile, config: Config) -> dict[str, tuple[str, ...]]:
    """The values a reading stage makes again instead of receiving them → the nodes that make
    each, itself included, in node order ([Note: values made again] in ``autopipe.trace.remade``).

    Under ``config.remake == "auto"`` a remakable value is made again where running those
    nodes on the slowest device costs less than sending it over one link; under ``all``
    every one is, under ``none`` none. So is every remakable value those nodes make (a stage
    that runs them has it), so that no stage both receives a value and makes it.
    """
    by_name = profile.by_name
    marked = [n.name for n in profile.nodes if n.remakable]
    if not marked or config.remake == "none" or (config.remake == "auto" and math.isinf(config.link_bandwidth)):
        return {}
    inputs: dict[str, list[str]] = {}
    for src, dst, _ in profile.edges:
        inputs.setdefault(dst, []).append(src)
    makes: dict[str, set[str]] = {}
    for name in marked:  # in node order: a node's inputs are done before it
        makes[name] = {name}.union(*(makes.get(a, set()) for a in inputs.get(name, ())))
    slowest = min(d.speed for d in config.devices)
    chosen: set[str] = set()
    for name in marked:
        cost = sum(by_name[m].forward_s for m in makes[name]) / slowest
        if config.remake == "all" or cost < config.comm_s(by_name[name].output_bytes):
            chosen |= makes[name]
    return {name: tuple(m for m in marked if m in makes[name]) for name in marked if name in chosen}


def node_call(node: NodeProfile) -> str:
    """What ``node`` runs, written without its module's path: its op, its target (none for
    a ``call_module``, whose target is its own path) and the parameters it reads, named
    within its module. Two layers built alike run the same calls in the same order."""
    prefix = f"{node.module}." if node.module else ""
    target = "" if node.op == "call_module" else node.target
    params = ",".join(q.removeprefix(prefix) for q in node.params)
    return f"{node.op} {target} {params}"


def _embedding_grads(profile: Profile, param_bytes: dict[str, int], microbatches: int) -> dict[str, int]:
    """Gradient bytes of the embedding weights that a CPU rank keeps on zero pages: fp32,
    read by one node only, ``ZERO_PAGES_MIN`` or more ([Note: an embedding's gradient on
    zero pages] in ``autopipe.runtime.grad_accum``; the caller checks devices, dtype and
    schedule as ``fuse_weight_grads`` does)."""
    readers = param_readers(profile.nodes)
    out = {}
    for n in profile.nodes:
        if not n.is_embedding() or len(n.params) != 1 or n.shared_params:
            continue
        (p,) = n.params
        if readers[p] == 1 and param_bytes.get(p, 0) >= ZERO_PAGES_MIN:
            out[p] = embedding_grad_bytes(param_bytes[p], n.output_bytes, n.activation_bytes, microbatches)
    return out


def merge_blocks(blocks: Sequence[Block]) -> Block:
    """One block holding all of ``blocks``' nodes (in the given order)."""
    pins = {b.pin for b in blocks if b.pin}
    return Block(
        nodes=tuple(n for b in blocks for n in b.nodes),
        forward_s=math.fsum(b.forward_s for b in blocks),
        backward_input_s=math.fsum(b.backward_input_s for b in blocks),
        backward_weight_s=math.fsum(b.backward_weight_s for b in blocks),
        activation_bytes=sum(b.activation_bytes for b in blocks),
        params=tuple(sorted({p for b in blocks for p in b.params})),
        real=sum(b.real for b in blocks),
        pin="first" if "first" in pins else "last" if pins else "",
        recomputable=all(b.recomputable for b in blocks),
        transient_bytes=max((b.transient_bytes for b in blocks), default=0),
    )


def writes_in_place(target: str) -> bool:
    """Whether a profiled node's target names an in-place operator (``aten.add_.Tensor``,
    ``copy_``, a method ``mul_``): by torch's convention its name ends in one ``_``."""
    parts = target.split(".")
    return parts[-1] in _IN_PLACE_OPERATORS or any(
        part.endswith("_") and not part.endswith("__") for part in parts)


_IN_PLACE_OPERATORS = frozenset({"setitem", "iadd", "isub", "imul", "itruediv", "ifloordiv",
                                 "imod", "ipow", "iand", "ior", "ixor", "imatmul"})
