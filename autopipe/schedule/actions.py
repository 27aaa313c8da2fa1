"""Schedule action orders: which forward/backward each rank runs, in which order.

Each rank runs a fixed program of compute actions; the simulator only decides
*when* each can start. The programs below are what torch runs::

    1F1B, p = 4 ranks, m = 6 micro-batches (F = forward, B = backward)

    rank 0  F0 F1 F2 F3 B0 F4 B1 F5 B2 B3 B4 B5
    rank 1  F0 F1 F2 B0 F3 B1 F4 B2 F5 B3 B4 B5
    rank 2  F0 F1 B0 F2 B1 F3 B2 F4 B3 F5 B4 B5
    rank 3  F0 B0 F1 B1 F2 B2 F3 B3 F4 B4 F5 B5

See [Note: which torch orders are real] in autopipe/_torch_pipelining.py for
where each order comes from, and [Note: DualPipeV] in autopipe/schedule/dualpipev.py for
its overlapped pairs (``ScheduleOrder.send_after``).
"""

from __future__ import annotations

import functools
from collections import defaultdict
from dataclasses import dataclass
from typing import NamedTuple

from autopipe.errors import PlanError
from autopipe.schedule.dualpipev import TorchAction, dualpipev_rank

SCHEDULES = ("gpipe", "1f1b", "interleaved-1f1b", "zb-h1", "zbv", "dualpipev")
"""Schedule names autopipe can simulate and run."""

_SINGLE_STAGE = ("gpipe", "1f1b")
V_SHAPED = ("zbv", "dualpipev")
"""Schedules with two stages per rank placed in a V: rank r runs stages r and 2p−1−r
(torch's ``ScheduleZBVZeroBubble`` and ``ScheduleDualPipeV``; their orders are read from
torch, DualPipeV's mirrored in ``autopipe.schedule.dualpipev`` too)."""


def rank_stages(schedule: str, rank: int, num_ranks: int, virtual_stages: int) -> list[int]:
    """The stages ``rank`` runs, in depth order (see ``placed_rank``)."""
    return [s for s in range(num_ranks * virtual_stages) if placed_rank(schedule, s, num_ranks) == rank]


def placed_rank(schedule: str, stage: int, num_ranks: int) -> int:
    """The rank that runs ``stage``: V-shaped (``V_SHAPED``) or loop-around (s mod p)."""
    if schedule in V_SHAPED:
        return stage if stage < num_ranks else 2 * num_ranks - 1 - stage
    return stage % num_ranks


class Action(NamedTuple):
    """One compute action of a rank's program."""

    stage: int
    """Model stage (with virtual stages, stage ``s`` lives on rank ``s % ranks``)."""
    kind: str
    """``F`` forward, ``B`` backward (input gradients only when the order splits off ``W``), ``W`` weight gradients."""
    microbatch: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleOrder:
    """Every rank's program for one step."""

    schedule: str
    num_ranks: int
    virtual_stages: int
    microbatches: int
    ranks: tuple[tuple[Action, ...], ...]
    """Per rank, its actions in program order."""
    split_backward: bool
    """True when backward is split into ``B`` (input gradients) and ``W`` (weight gradients)."""
    source: str
    """``torch`` (taken from torch's schedule class) or ``autopipe`` (mirrors torch's loop)."""
    send_after: tuple[tuple[int, ...], ...] = ()
    """Per rank and action, the position of the action after which torch posts this
    action's send: its own, or later where one torch action runs several of these
    (DualPipeV's overlapped forward and backward, its full backward written as B then W;
    [Note: DualPipeV]). Empty: every action's send is posted when it ends."""

    @property
    def num_stages(self) -> int:
        """Model stages: ranks × virtual stages."""
        return self.num_ranks * self.virtual_stages

    def rank_of(self, stage: int) -> int:
        """The rank that runs ``stage`` (torch's loop-around placement; V-shaped for ``V_SHAPED``)."""
        return placed_rank(self.schedule, stage, self.num_ranks)

    def posts(self, rank: int) -> tuple[tuple[int, ...], ...]:
        """Per action of ``rank``'s program, the actions whose sends are posted when it
        ends, in program order (see ``send_after``)."""
        program = self.ranks[rank]
        if not self.send_after:
            return tuple((i,) for i in range(len(program)))
        out: list[list[int]] = [[] for _ in program]
        for i, j in enumerate(self.send_after[rank]):
            out[j].append(i)
        return tuple(tuple(x) for x in out)


def check_schedule(schedule: str, num_ranks: int, microbatches: int, virtual_stages: int) -> None:
    """Check that the simulator can build this schedule's order.

    Raises:
        PlanError: unknown schedule, fewer than one rank or micro-batch, virtual
            stages with a single-stage schedule, or a micro-batch count the
            interleaved schedules cannot divide into rounds.
    """
    if schedule not in SCHEDULES:
        raise PlanError(f"unknown schedule {schedule!r}",
                        hint=f"use one of {', '.join(SCHEDULES)}")
    if num_ranks < 1 or microbatches < 1 or virtual_stages < 1:
        raise PlanError(
            f"schedule needs at least one rank, micro-batch and virtual stage "
            f"(got {num_ranks} ranks, {microbatches} micro-batches, {virtual_stages} virtual stages)",
            hint="pass positive counts")
    if schedule in _SINGLE_STAGE and virtual_stages != 1:
        raise PlanError(f"schedule {schedule} runs one stage per rank, got {virtual_stages} virtual stages",
                        hint="use --schedule interleaved-1f1b for several stages per rank")
    if schedule in V_SHAPED and virtual_stages != 2:
        raise PlanError(f"schedule {schedule} runs exactly two stages per rank, got {virtual_stages}",
                        hint="use 2 virtual stages")
    if schedule == "dualpipev" and microbatches < 2 * num_ranks:
        # torch's ScheduleDualPipeV refuses it too: its phases would run out of micro-batches
        raise PlanError(f"DualPipeV needs at least as many micro-batches as stages "
                        f"({microbatches} micro-batches, {2 * num_ranks} stages on {num_ranks} ranks)",
                        hint=f"use --microbatches {2 * num_ranks} or more, or --schedule zbv")
    if schedule not in _SINGLE_STAGE and schedule not in V_SHAPED:
        rounds = max(1, microbatches // num_ranks)
        if microbatches % rounds:
            raise PlanError(
                f"schedule {schedule} with {num_ranks} ranks needs the micro-batch count to be a "
                f"multiple of its {rounds} rounds, got {microbatches}",
                hint=f"use {microbatches - microbatches % rounds} or {microbatches + rounds - microbatches % rounds} micro-batches")


def check_runnable(schedule: str, num_ranks: int, microbatches: int, virtual_stages: int = 1) -> None:
    """Check that torch will run this schedule (stricter than what the simulator accepts).

    Raises:
        PlanError: as ``check_schedule``, and 1F1B with fewer micro-batches
            than ranks (torch's ``Schedule1F1B`` refuses it).
    """
    check_schedule(schedule, num_ranks, microbatches, virtual_stages)
    if schedule == "1f1b" and microbatches < num_ranks:
        raise PlanError(f"1F1B needs at least as many micro-batches as stages "
                        f"({microbatches} micro-batches, {num_ranks} stages)",
                        hint=f"use --microbatches {num_ranks} or more, or --schedule gpipe")


def _gpipe(m: int, r: int) -> list[Action]:
    return [Action(r, "F", k) for k in range(m)] + [Action(r, "B", k) for k in range(m)]


def _one_f_one_b(p: int, m: int, r: int) -> list[Action]:
    # torch's Schedule1F1B._step_microbatches: min(m, p - r) warm-up forwards,
    # then backward k followed by the next forward, until forwards run out.
    warmup = min(m, p - r)
    out = [Action(r, "F", k) for k in range(warmup)]
    for k in range(m):
        out.append(Action(r, "B", k))
        if warmup + k < m:
            out.append(Action(r, "F", warmup + k))
    return out


def _interleaved(p: int, v: int, m: int, r: int, *, zero_bubble: bool) -> list[Action]:
    # Mirrors torch's ScheduleInterleaved1F1B / ScheduleInterleavedZeroBubble
    # (_get_warmup_ops + _get_1f1b_rank_ops): depth-first over the rank's
    # stages in rounds of `per_round` micro-batches; zero bubble delays each
    # W by `r` backward steps so that W fills the cool-down bubble.
    rounds = max(1, m // p)
    per_round = m // rounds
    total = m * v
    warmup = min((v - 1) * per_round + (1 if zero_bubble else 2) * (p - 1 - r), total)
    next_mb: dict[tuple[str, int], int] = defaultdict(int)

    def take(kind: str, stage: int) -> Action:
        mb = next_mb[kind, stage]
        next_mb[kind, stage] = mb + 1
        return Action(stage, kind, mb)

    out: list[Action] = []
    backward_stages: list[int] = []
    weights_done = 0
    for op in range(warmup + total):
        if op < total:
            out.append(take("F", ((op // per_round) % v) * p + r))
        if op >= warmup:
            stage = (v - 1 - ((op - warmup) // per_round) % v) * p + r
            out.append(take("B", stage))
            backward_stages.append(stage)
            if zero_bubble and op - warmup >= r:
                out.append(take("W", backward_stages[weights_done]))
                weights_done += 1
    if zero_bubble:
        out.extend(take("W", s) for s in backward_stages[weights_done:])
    return out


def autopipe_order(schedule: str, num_ranks: int, microbatches: int,
                   virtual_stages: int = 1) -> ScheduleOrder:
    """The order built here, without torch (used where torch does not expose it)."""
    check_schedule(schedule, num_ranks, microbatches, virtual_stages)
    if schedule == "dualpipev":
        return _from_torch_kinds(schedule, num_ranks, microbatches, virtual_stages,
                                 [dualpipev_rank(num_ranks, microbatches, r) for r in range(num_ranks)],
                                 source="autopipe")
    if schedule in V_SHAPED:
        raise PlanError(f"schedule {schedule} needs torch.distributed.pipelining's order, "
                        "which this torch does not have", hint="upgrade torch")
    p, m, v = num_ranks, microbatches, virtual_stages
    if schedule == "gpipe":
        ranks = [_gpipe(m, r) for r in range(p)]
    elif schedule == "1f1b":
        ranks = [_one_f_one_b(p, m, r) for r in range(p)]
    else:
        ranks = [_interleaved(p, v, m, r, zero_bubble=schedule == "zb-h1") for r in range(p)]
    return ScheduleOrder(schedule=schedule, num_ranks=p, virtual_stages=v, microbatches=m,
                         ranks=tuple(tuple(a) for a in ranks), split_backward=schedule == "zb-h1",
                         source="autopipe")


def _torch_order(schedule: str, num_ranks: int, microbatches: int,
                 virtual_stages: int) -> list[list[TorchAction]] | None:
    """torch's order, imported only when needed (planning never needs torch.distributed)."""
    if schedule in _SINGLE_STAGE:
        return None  # see [Note: which torch orders are real]
    try:
        from autopipe._torch_pipelining import torch_compute_order
    except ImportError:  # a torch build without torch.distributed
        return None
    return torch_compute_order(schedule, num_ranks, microbatches, virtual_stages)


@functools.lru_cache(maxsize=512)
def schedule_order(schedule: str, num_ranks: int, microbatches: int,
                   virtual_stages: int = 1) -> ScheduleOrder:
    """The order torch runs for this schedule: torch's own where it exposes it.

    Raises:
        PlanError: see ``check_schedule``.
    """
    check_schedule(schedule, num_ranks, microbatches, virtual_stages)
    torch_order = _torch_order(schedule, num_ranks, microbatches, virtual_stages)
    if torch_order is None:
        return autopipe_order(schedule, num_ranks, microbatches, virtual_stages)
    return _from_torch_kinds(schedule, num_ranks, microbatches, virtual_stages, torch_order,
                             source="torch")


def _from_torch_kinds(schedule: str, num_ranks: int, microbatches: int, virtual_stages: int,
                      programs: list[list[TorchAction]], *, source: str) -> ScheduleOrder:
    """An order from torch's kinds: ``I`` is a B (input gradients), and where the order
    splits the backward a full backward ``B`` is a B then a W, its send after the W
    ([Note: DualPipeV]); sends move with the action they are posted after."""
    split = any(kind in ("I", "W") for rank in programs for _, kind, _, _ in rank)
    ranks: list[tuple[Action, ...]] = []
    send_after: list[tuple[int, ...]] = []
    for program in programs:
        actions: list[Action] = []
        last: list[int] = []  # per torch action, the position of its last piece here
        first: list[int] = []
        for s, kind, mb, _ in program:
            first.append(len(actions))
            if kind == "B" and split:
                actions += [Action(s, "B", mb), Action(s, "W", mb)]
            else:
                actions.append(Action(s, "B" if kind == "I" else kind, mb))
            last.append(len(actions) - 1)
        after = [0] * len(actions)
        for j, (_, _, _, sent) in enumerate(program):
            for i in range(first[j], last[j] + 1):
                after[i] = last[sent]
        ranks.append(tuple(actions))
        send_after.append(tuple(after))
    identity = all(a == tuple(range(len(a))) for a in send_after)
    return ScheduleOrder(schedule=schedule, num_ranks=num_ranks, virtual_stages=virtual_stages,
                         microbatches=microbatches, ranks=tuple(ranks), split_backward=split,
                         source=source, send_after=() if identity else tuple(send_after))


def order_problems(order: ScheduleOrder) -> list[str]:
    """What is wrong with an order, as readable lines (empty when it is valid).

    Valid: every (stage, kind, micro-batch) appears exactly once, on the rank
    that owns the stage; a stage's backward comes after its forward and its W
    after its B in the rank's program; a send is posted after its own action
    ends (``send_after``), before the program does.
    """
    problems: list[str] = []
    kinds = ("F", "B", "W") if order.split_backward else ("F", "B")
    expected = {Action(s, k, mb) for s in range(order.num_stages) for k in kinds
                for mb in range(order.microbatches)}
    seen: set[Action] = set()
    for r, program in enumerate(order.ranks):
        position: dict[Action, int] = {}
        for i, a in enumerate(program):
            if a in seen:
                problems.append(f"rank {r}: {a} appears twice")
            seen.add(a)
            position[a] = i
            if order.rank_of(a.stage) != r:
                problems.append(f"rank {r}: {a} belongs to rank {order.rank_of(a.stage)}")
        for a, i in position.items():
            before = {"B": "F", "W": "B"}.get(a.kind)
            if before is not None:
                j = position.get(Action(a.stage, before, a.microbatch))
                if j is None or j > i:
                    problems.append(f"rank {r}: {a} runs before {before}{a.microbatch} of stage {a.stage}")
    for r, after in enumerate(order.send_after):
        for i, j in enumerate(after):
            if not i <= j < len(order.ranks[r]):
                problems.append(f"rank {r}: the send of {order.ranks[r][i]} is posted after action {j}")
    problems.extend(f"missing {a}" for a in sorted(expected - seen))
    problems.extend(f"unexpected {a}" for a in sorted(seen - expected))
    return problems
