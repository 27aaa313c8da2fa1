"""Virtual stages (chunks): which rank runs each chunk, and what each rank holds in flight.

[Note: chunks]

An interleaved schedule cuts the model depth-wise into n = p·V chunks and runs V of them
on each of p ranks; torch's ``ScheduleInterleaved1F1B`` places chunk c on rank c mod p,
``ScheduleZBVZeroBubble`` and ``ScheduleDualPipeV`` (V = 2) in a V, rank r holding chunks r
and 2p−1−r::

    p = 2, V = 2           chunk 0   chunk 1   chunk 2   chunk 3
    interleaved-1f1b       rank 0    rank 1    rank 0    rank 1
    zbv, dualpipev         rank 0    rank 1    rank 1    rank 0

The planner treats the chunks as its "stages" in depth order: each has its own F, B and W,
each boundary between chunks on different ranks is a send (in a V, the two chunks at the
tip share a rank, which hands the tensors over in memory: no send),
and the step is the longest path through torch's action order for the schedule, where a
rank's actions run one at a time ([Note: the step time is a longest path]). Memory, though,
is per *rank*: the parameters, gradients and optimizer states of all its chunks, their
send/receive buffers, and the activations live at the worst moment of its program. A rank
runs its actions in a fixed order, so the moment is decided by the order alone: after each
forward, chunk c holds L_c micro-batches (forwards done, last backward not yet done), and
the rank's activation peak is max over those moments of Σ_c L_c · a_c with a_c the chunk's
saved bytes per micro-batch. That is linear in the a_c for each moment, so the ILP gets one
memory row per moment (``live_sets`` keeps the moments no other one dominates) and
``costs.evaluate`` takes the largest of the same sums: both equal the simulator's per-rank
peak (``SimResult.peak_activation_bytes``).
"""

from __future__ import annotations

import functools

from autopipe.schedule.actions import placed_rank, schedule_order

Live = tuple[int, ...]
"""Micro-batches held per chunk (all n chunks; zero for other ranks' chunks) at one moment."""


def rank_of(chunk: int, num_ranks: int, schedule: str = "interleaved-1f1b") -> int:
    """The rank that runs ``chunk`` under ``schedule`` (loop-around, or V-shaped for zbv and dualpipev)."""
    return placed_rank(schedule, chunk, num_ranks)


@functools.lru_cache(maxsize=256)
def live_sets(schedule: str, num_ranks: int, microbatches: int,
              virtual_stages: int) -> tuple[tuple[Live, ...], ...]:
    """Per rank, the moments of its program whose held micro-batches no other moment of the
    rank covers (see [Note: chunks]); the rank's activation peak is the largest Σ_c L_c · a_c.

    A micro-batch is held by a chunk from its F to its last backward action (B, or W when
    the schedule splits it off), as in the simulator.
    """
    order = schedule_order(schedule, num_ranks, microbatches, virtual_stages)
    release = "W" if order.split_backward else "B"
    n = num_ranks * virtual_stages
    out: list[tuple[Live, ...]] = []
    for program in order.ranks:
        held = [0] * n
        moments: set[Live] = set()
        for a in program:
            if a.kind == "F":
                held[a.stage] += 1
                moments.add(tuple(held))
            elif a.kind == release:
                held[a.stage] -= 1
        kept = [u for u in moments
                if not any(v != u and all(x <= y for x, y in zip(u, v)) for v in moments)]
        out.append(tuple(sorted(kept, reverse=True)))
    return tuple(out)


@functools.lru_cache(maxsize=256)
def chunk_inflight(schedule: str, num_ranks: int, microbatches: int,
                   virtual_stages: int) -> tuple[int, ...]:
    """Per chunk, the most micro-batches it holds at once (the simulator's
    ``stage_peak_inflight``); what a plan's ``memory.activations`` of a chunk is counted with."""
    n = num_ranks * virtual_stages
    peak = [0] * n
    for moments in live_sets(schedule, num_ranks, microbatches, virtual_stages):
        for held in moments:
            peak = [max(a, b) for a, b in zip(peak, held)]
    return tuple(peak)
