"""A schedule's step as a longest path: the iteration time, and the critical path's counts.

[Note: the step time is a longest path]

Every rank runs a fixed program (``autopipe.schedule.schedule_order``); an action starts
when the rank is free and its input has arrived, and each boundary's link carries
sends one at a time in the order they are issued — exactly the simulator's rules
(``autopipe.schedule.simulate``). None of these orders depends on the costs, so the
step is a fixed DAG of tasks: compute tasks F, B and W of each stage, and send tasks
lasting c_b (forward, the values crossing boundary b) and r_b (back, their gradients: less
where a value without a gradient goes forward only, [Note: values without a gradient] in
``autopipe.trace.no_grad``). Without a split backward (1F1B, GPipe) B lasts the whole
backward B_s and there is no W; a zero-bubble schedule (zb-h1) splits it into B, the
input gradients (B_s − W_s), and W, the weight gradients (W_s), which only needs its own
B (its rank's program runs it later). Each rank ends with its stage's optimizer step O_s
(once per step, linear in the parameters the stage holds). The iteration time is the DAG's
longest path, and
any one path P gives a lower bound that is *linear* in the per-stage costs:

    iteration ≥ Σ_s (nF_s(P)·F_s + nB_s(P)·B'_s + nW_s(P)·W_s + nO_s(P)·O_s)
                + Σ_b (nC_b(P)·c_b + nR_b(P)·r_b)

with nF, nB, nW, nO, nC, nR the path's task counts and B'_s the B task's time (B_s, or B_s − W_s
when split). DualPipeV posts the send of an overlapped forward when its paired backward
ends ([Note: DualPipeV]): that send task waits for the backward's W, still a fixed DAG.
The ILP adds such cuts for critical paths until the longest path of its
answer is one of them, so it optimises the simulated step time itself, not a closed-form
stand-in.

    rank 0  F0 F1 F2 F3 B0 F4 B1 ...      F(s,k) needs F(s-1,k) and its send;
    rank 1     F0 F1 F2 B0 F3 B1 ...      B(s,k) needs B(s+1,k) and its send back;
                                          W(s,k) needs B(s,k), earlier on its rank.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

from autopipe.schedule.actions import V_SHAPED, rank_stages, schedule_order

Count = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]
"""(nF per stage, nB per stage, nW per stage, nC per boundary then nR per boundary, nO per
stage): nC counts sends forward, nR sends back (2(p − 1) in all); nW is all 0 without a
split backward; nO marks the one optimizer step a path ends with, if any."""

_KINDS = {"F": 0, "B": 1, "W": 2}
_SEND = 3
_OPTIMIZER = 4
_RETURN = 5


@dataclass(frozen=True, slots=True)
class _Dag:
    kinds: tuple[int, ...]
    """Per task: 0 = forward, 1 = backward (input gradients when split), 2 = weight
    gradients, 3 = send forward, 4 = the stage's optimizer step (after its rank's last task),
    5 = send back; tasks are in topological order."""
    where: tuple[int, ...]
    """Per task: its stage (compute) or boundary (send)."""
    preds: tuple[tuple[int, ...], ...]
    split: bool
    """Whether backward is split into B and W."""


def splits_backward(schedule: str) -> bool:
    """Whether ``schedule`` runs the weight gradients as separate W tasks (zero bubble;
    DualPipeV writes its full backwards as a B and a W too: [Note: DualPipeV])."""
    v = 2 if schedule in V_SHAPED else 1
    return schedule_order(schedule, 1, v, v).split_backward


@functools.lru_cache(maxsize=64)
def _dag(schedule: str, p: int, m: int, v: int = 1) -> _Dag:
    # p ranks, each running v chunks (stages); n = p·v stages in all ([Note: chunks])
    order = schedule_order(schedule, p, m, v)
    n = p * v
    index: dict[tuple[str, int, int], int] = {}
    kinds: list[int] = []
    where: list[int] = []
    preds: list[tuple[int, ...]] = []
    link_last: dict[tuple[str, int], int] = {}
    pointer = [0] * p
    posts = [order.posts(r) for r in range(p)]
    remaining = sum(len(r) for r in order.ranks)

    def add(key: tuple[str, int, int], kind: int, at: int, before: list[int]) -> int:
        index[key] = len(kinds)
        kinds.append(kind)
        where.append(at)
        preds.append(tuple(before))
        return index[key]

    # walk the programs like the simulator does, so tasks come out in a topological order
    while remaining:
        progressed = False
        for r in range(p):
            program = order.ranks[r]
            while pointer[r] < len(program):
                s, kind, k = program[pointer[r]]
                before = [index[("c", r, pointer[r] - 1)]] if pointer[r] else []
                if kind == "F":
                    need = ("sf", s - 1, k) if s > 0 else None
                elif kind == "B":
                    need = ("sb", s, k) if s < n - 1 else ("F", s, k)
                else:
                    need = None  # W needs its B: earlier in this program
                if need is not None and need not in index:
                    break
                if need is not None:
                    before.append(index[need])
                t = add(("c", r, pointer[r]), _KINDS[kind], s, before)
                index[(kind, s, k)] = t
                # its send, or those posted after it ([Note: DualPipeV]): they wait for t
                for js, jkind, jk in (program[j] for j in posts[r][pointer[r]]):
                    if jkind == "F" and js < n - 1:
                        link = ("sf", js)
                        prev = [link_last[link]] if link in link_last else []
                        link_last[link] = add(("sf", js, jk), _SEND, js, [t, *prev])
                    elif jkind == "B" and js > 0:
                        link = ("sb", js - 1)
                        prev = [link_last[link]] if link in link_last else []
                        link_last[link] = add(("sb", js - 1, jk), _RETURN, js - 1, [t, *prev])
                pointer[r] += 1
                remaining -= 1
                progressed = True
        assert progressed, f"schedule {schedule} deadlocks"
    # each stage's optimizer step runs once its rank is done; a rank's chunks one after
    # another, in depth order (as the simulator runs them)
    for r in range(p):
        if pointer[r]:
            last = index[("c", r, pointer[r] - 1)]
            for k, s in enumerate(rank_stages(schedule, r, p, v)):
                last = add(("o", r, k), _OPTIMIZER, s, [last])
    return _Dag(kinds=tuple(kinds), where=tuple(where), preds=tuple(preds),
                split=order.split_backward)


def _b_task(split: bool, backward: Sequence[float], weight: Sequence[float]) -> Sequence[float]:
    """The B task's time per stage: the whole backward, or its input-gradient part when split
    (as ``autopipe.partition.planner.predict`` hands it to the simulator)."""
    return [max(0.0, b - w) for b, w in zip(backward, weight)] if split else backward


def longest_path(schedule: str, forward: Sequence[float], backward: Sequence[float],
                 weight: Sequence[float], sends: Sequence[float],
                 microbatches: int, optimizer: Sequence[float] = (),
                 virtual_stages: int = 1, returns: Sequence[float] | None = None) -> tuple[float, Count]:
    """The step time of ``schedule`` and the task counts of one critical path.

    Args:
        schedule: one of ``autopipe.partition.problem.SCHEDULES`` (``1f1b``, ``gpipe``,
            ``zb-h1``).
        forward: F_s per stage (seconds per micro-batch).
        backward: B_s per stage, the whole backward (input + weight gradients).
        weight: W_s per stage, the weight-gradient part of B_s; a split schedule runs it as
            a separate W task (and B_s − W_s as B), others ignore it.
        sends: c_b per boundary (seconds per micro-batch forward), ``p − 1`` of them.
        microbatches: m.
        optimizer: O_s per stage, once per step after the stage's last task (default 0).
        virtual_stages: chunks per rank ([Note: chunks]): the stages are ``len(forward)``
            chunks, chunk c on rank c mod (``len(forward)`` / ``virtual_stages``).
        returns: r_b per boundary (seconds per micro-batch back); default ``sends``.
    """
    p = len(forward)
    dag = _dag(schedule, p // virtual_stages, microbatches, virtual_stages)
    dur = (forward, _b_task(dag.split, backward, weight), weight, sends, optimizer or [0.0] * p,
           sends if returns is None else returns)
    end = [0.0] * len(dag.kinds)
    via = [-1] * len(dag.kinds)
    for t, (kind, at, before) in enumerate(zip(dag.kinds, dag.where, dag.preds)):
        start, arg = 0.0, -1
        for u in before:
            if arg < 0 or end[u] > start:
                start, arg = end[u], u
        via[t] = arg
        end[t] = start + dur[kind][at]
    last = max(range(len(end)), key=end.__getitem__)
    counts = ([0] * p, [0] * p, [0] * p, [0] * max(p - 1, 0), [0] * p, [0] * max(p - 1, 0))
    t = last
    while t >= 0:
        counts[dag.kinds[t]][dag.where[t]] += 1
        t = via[t]
    nf, nb, nw, nc, no, nr = counts
    return end[last], (tuple(nf), tuple(nb), tuple(nw), tuple(nc + nr), tuple(no))


def path_length(schedule: str, count: Count, forward: Sequence[float], backward: Sequence[float],
                weight: Sequence[float], sends: Sequence[float],
                optimizer: Sequence[float] = (), returns: Sequence[float] | None = None) -> float:
    """The length of a path of ``schedule`` with these task counts under these costs
    (arguments as ``longest_path``)."""
    nf, nb, nw, nc, no = count
    b_task = _b_task(splits_backward(schedule), backward, weight)
    links = [*sends, *(sends if returns is None else returns)]
    return (sum(a * x for a, x in zip(nf, forward)) + sum(a * x for a, x in zip(nb, b_task))
            + sum(a * x for a, x in zip(nw, weight)) + sum(a * x for a, x in zip(nc, links))
            + sum(a * x for a, x in zip(no, optimizer)))


def seed_paths(schedule: str, p: int, m: int, virtual_stages: int = 1) -> list[Count]:
    """Critical paths when one stage, or one link, dominates: good first cuts for the ILP
    (``p`` stages: chunks, with ``virtual_stages`` per rank)."""
    seeds: set[Count] = set()

    def add(forward: list[float], sends: list[float]) -> None:
        # backward twice the forward, half of it weight gradients (B and W as long as F)
        seeds.add(longest_path(schedule, forward, [2 * f for f in forward], forward, sends, m,
                               virtual_stages=virtual_stages)[1])

    for k in range(p):
        add([100.0 if s == k else 1.0 for s in range(p)], [0.01] * (p - 1))
    for b in range(p - 1):
        add([1.0] * p, [100.0 if i == b else 0.01 for i in range(p - 1)])
    add([1.0] * p, [0.0] * (p - 1))
    if virtual_stages > 1:
        seeds.update(rank_paths(schedule, p // virtual_stages, m, virtual_stages))
    return sorted(seeds)


def rank_paths(schedule: str, ranks: int, m: int, virtual_stages: int) -> list[Count]:
    """Per rank, the path through all its actions and then its optimizer steps: a rank runs
    them one at a time, so the step is at least its chunks' whole work. With several chunks
    per rank no extreme cost pattern above need make it critical, and without it the MIP
    would learn each rank's load one cut at a time ([Note: chunks])."""
    n = ranks * virtual_stages
    split = splits_backward(schedule)
    out = []
    for r in range(ranks):
        mine = set(rank_stages(schedule, r, ranks, virtual_stages))
        count = tuple(m if c in mine else 0 for c in range(n))
        out.append((count, count, count if split else (0,) * n, (0,) * (2 * n - 2),
                    tuple(1 if c in mine else 0 for c in range(n))))
    return out


NEARBY_BUMPS = (1.02, 1.05, 1.1)
"""How much slower ``nearby_paths`` makes one stage or link at a time."""


def nearby_paths(schedule: str, forward: Sequence[float], backward: Sequence[float],
                 weight: Sequence[float], sends: Sequence[float], microbatches: int,
                 bumps: Sequence[float] = NEARBY_BUMPS,
                 optimizer: Sequence[float] = (), virtual_stages: int = 1,
                 returns: Sequence[float] | None = None) -> list[Count]:
    """Critical paths of these costs and of each stage (and link, both ways) made each of
    ``bumps`` times slower.

    Near a balanced partition the critical path flips between such neighbours; adding
    them all at once saves the ILP rounds, and every path added also tightens the
    stage windows ([Note: stage windows]). With one bump (1.05) the zb-h1 planner
    needed a second 16 s MIP solve on the 2,000-block chain of ``bench_partition``
    (35 s in all, 4,045 binaries); with three it needs one (16 s, 2,885 binaries).
    1F1B plans took the same time either way.
    """
    def slower(xs: Sequence[float], k: int, bump: float) -> list[float]:
        return [x * bump if i == k else x for i, x in enumerate(xs)]

    v = virtual_stages
    back = sends if returns is None else returns
    out = {longest_path(schedule, forward, backward, weight, sends, microbatches, optimizer, v, back)[1]}
    for bump in bumps:
        for k in range(len(forward)):
            out.add(longest_path(schedule, slower(forward, k, bump), slower(backward, k, bump),
                                 slower(weight, k, bump), sends, microbatches,
                                 slower(optimizer, k, bump) if optimizer else (), v, back)[1])
        for k in range(len(sends)):
            out.add(longest_path(schedule, forward, backward, weight, slower(sends, k, bump),
                                 microbatches, optimizer, v, slower(back, k, bump))[1])
            if list(back) != list(sends):  # each way alone too
                out.add(longest_path(schedule, forward, backward, weight, slower(sends, k, bump),
                                     microbatches, optimizer, v, back)[1])
                out.add(longest_path(schedule, forward, backward, weight, sends,
                                     microbatches, optimizer, v, slower(back, k, bump))[1])
    return sorted(out)
