"""Which rank runs which stage, and which torch schedule runs a plan; checked before any rank starts."""

from __future__ import annotations

from dataclasses import dataclass

from autopipe._torch_pipelining import schedule_class
from autopipe.errors import PlanError, PlanMismatchError
from autopipe.plan_format import Plan


@dataclass(frozen=True, slots=True)
class ScheduleKind:
    """A schedule autopipe can run and how it places stages on ranks."""

    name: str
    """autopipe's name (what plans say)."""
    torch_class: str
    """Class name in ``torch.distributed.pipelining``."""
    placement: str
    """``single`` (one stage per rank), ``loop`` (stage s on rank s % p) or ``v``
    (rank r holds stages r and 2p-1-r)."""
    splits_backward: bool = False
    """Backward runs as separate input- and weight-gradient passes (zero bubble)."""


SCHEDULES: dict[str, ScheduleKind] = {k.name: k for k in (
    ScheduleKind("1f1b", "Schedule1F1B", "single"),
    ScheduleKind("gpipe", "ScheduleGPipe", "single"),
    ScheduleKind("interleaved-1f1b", "ScheduleInterleaved1F1B", "loop"),
    ScheduleKind("looped-bfs", "ScheduleLoopedBFS", "loop"),
    ScheduleKind("zb-h1", "ScheduleInterleavedZeroBubble", "loop", splits_backward=True),
    ScheduleKind("zbv", "ScheduleZBVZeroBubble", "v", splits_backward=True),
    ScheduleKind("dualpipev", "ScheduleDualPipeV", "v", splits_backward=True),
)}
_ALIASES = {
    "interleaved1f1b": "interleaved-1f1b",
    "loopedbfs": "looped-bfs",
    "zero-bubble": "zb-h1",
    "interleaved-zero-bubble": "zb-h1",
    "interleavedzerobubble": "zb-h1",
    "zbvzerobubble": "zbv",
    "zbv-zero-bubble": "zbv",
    "dualpipe-v": "dualpipev",
}


def schedule_kind(name: str) -> ScheduleKind:
    """The runnable schedule a plan's ``schedule`` names (case and ``_``/``-`` ignored).

    Raises:
        PlanError: unknown, or this torch has no such schedule class.
    """
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    kind = SCHEDULES.get(key)
    if kind is None:
        raise PlanError(f"unknown schedule {name!r}", hint=f"use one of {', '.join(SCHEDULES)}")
    if schedule_class(kind.torch_class) is None:
        import torch

        raise PlanError(f"schedule {kind.name} needs torch.distributed.pipelining.{kind.torch_class}, "
                        f"which torch {torch.__version__} does not have",
                        hint="upgrade torch, or plan with --schedule 1f1b")
    return kind


def rank_of_stages(plan: Plan) -> list[int]:
    """The rank that runs each stage, from the plan's ``stage.rank`` or the schedule's placement.

    Raises:
        PlanError: the ranks do not fit the schedule's placement.
    """
    kind = schedule_kind(plan.schedule)
    n = plan.num_stages
    given = [s.rank for s in plan.stages]
    if all(r is not None for r in given):
        ranks = [int(r) for r in given if r is not None]
        p = len(set(ranks))
    elif kind.placement == "single":
        p = n
    else:
        p = len(plan.devices)
        if not 0 < p < n:
            raise PlanError(f"schedule {kind.name} runs several stages per rank, but the plan gives "
                            f"no stage ranks and {p} devices for {n} stages",
                            hint="regenerate the plan; it must say which rank runs each stage")
    expected = [_placed(kind, s, p) for s in range(n)]
    if any(r is not None for r in given) and given != expected:
        raise PlanError(f"schedule {kind.name} places stages on ranks {expected}, the plan says {given}",
                        hint="regenerate the plan for this schedule")
    if kind.placement != "single" and n % p:
        raise PlanError(f"schedule {kind.name} needs the same number of stages on every rank "
                        f"({n} stages, {p} ranks)", hint=f"use a multiple of {p} stages")
    if kind.placement == "v" and n != 2 * p:
        raise PlanError(f"schedule {kind.name} needs exactly two stages per rank ({n} stages, {p} ranks)",
                        hint=f"plan {2 * p} stages")
    return expected


def _placed(kind: ScheduleKind, stage: int, ranks: int) -> int:
    if kind.placement == "single":
        return stage
    if kind.placement == "loop":
        return stage % ranks
    return stage if stage < ranks else 2 * ranks - 1 - stage


def rank_grid(plan: Plan) -> list[list[int]]:
    """``grid[q][r]``: the global rank of pipeline rank ``q`` in data-parallel replica ``r``.

    Pipeline rank ``q`` runs the stages ``rank_of_stages`` gives it; a plan without
    ``data_parallel`` is one replica on ranks ``0 … p−1``, else its ``ranks[stage][replica]``
    place every replica (``autopipe.partition.replicas``: ``pipelines`` or ``replicas``).

    Raises:
        PlanError: a replica's pipeline ranks are not in increasing global rank order (its
            process group numbers them that way, as the stages must be).
    """
    positions = rank_of_stages(plan)
    dp = plan.data_parallel
    if dp is None:
        return [[q] for q in range(len(set(positions)))]
    # data_parallel names every rank once (DataParallel checks it): one stage per pipeline rank
    out = [list(dp.ranks[positions.index(q)]) for q in range(len(positions))]
    for r in range(dp.degree):
        column = [row[r] for row in out]
        if column != sorted(column):
            raise PlanError(f"replica {r} runs its pipeline on ranks {column}, not in increasing order",
                            hint="regenerate the plan (placement pipelines or replicas)")
    return out


def grid_position(plan: Plan, rank: int) -> tuple[int, int]:
    """(pipeline rank, replica) of global ``rank`` (``rank_grid``).

    Raises:
        PlanError: as ``rank_grid``, or ``rank`` runs nothing of the plan.
    """
    for q, row in enumerate(rank_grid(plan)):
        if rank in row:
            return q, row.index(rank)
    raise PlanError(f"rank {rank} runs no stage of the plan ({num_ranks(plan)} ranks)",
                    hint="run as many processes as the plan has ranks")


def num_ranks(plan: Plan) -> int:
    """How many processes (ranks) run the plan: pipeline ranks × data-parallel replicas."""
    return len(set(rank_of_stages(plan))) * plan.replicas


def check_world_size(plan: Plan, world_size: int) -> None:
    """Raise unless ``world_size`` processes is what the plan needs.

    Raises:
        PlanMismatchError: another number of processes.
    """
    need = num_ranks(plan)
    if world_size != need:
        replicas = f" x {plan.replicas} data-parallel replicas" if plan.replicas > 1 else ""
        raise PlanMismatchError(
            f"the plan runs on {need} ranks ({plan.num_stages} stages{replicas}, schedule {plan.schedule}) "
            f"but the world size is {world_size}",
            hint=f"start {need} processes: torchrun --nproc-per-node {need} -m autopipe train ... "
                 f"or autopipe train ... --launch {need}")


def check_fingerprint(plan: Plan, fingerprint: str) -> None:
    """Raise unless the plan was made for the graph with this fingerprint.

    Raises:
        PlanMismatchError: the plan was made for another model or micro-batch shape.
    """
    if plan.graph_fingerprint != fingerprint:
        raise PlanMismatchError(
            f"the plan was made for another model or micro-batch shape (plan graph "
            f"{plan.graph_fingerprint[:12]}, this model {fingerprint[:12]})",
            hint="pass the same SPEC, --spec-arg knobs and --batch-size the plan was made with, "
                 "or make a new plan with `autopipe plan`; a model whose code iterates a set "
                 "(ModernBERT) traces in an order that follows PYTHONHASHSEED (the autopipe "
                 "commands use 0 unless it is set): give the plan's maker and every rank the same")
