"""DualPipeV's action order, built here as torch's ``ScheduleDualPipeV`` builds it.

[Note: DualPipeV]

torch's ``ScheduleDualPipeV`` (torch 2.13, ``torch/distributed/pipelining/schedules.py``,
``_calculate_single_rank_operations``, lines 3459–3619) places 2p stages in a V (rank r
runs stages r and 2p−1−r, as ZBV) and needs m ≥ 2p micro-batches. Each rank's list has
four kinds of compute action: F, I (input gradients), W (weight gradients, from a queue of
the I's not yet followed by one), B (the full backward, input and weight gradients in one
autograd call), and OVERLAP_F_B, a forward of one of its stages paired with a full
backward of the other (DeepSeek's DualPipe overlaps their compute and communication on
separate CUDA streams). What torch actually does with that pair:

- ``_PipelineScheduleRuntime._step_microbatches`` (lines 2622–2638) runs a custom function
  if one is registered for OVERLAP_F_B (``register_custom_function``; neither
  ``ScheduleDualPipeV`` nor autopipe registers one), else
  ``for sub_a in action.sub_actions: _perform_action(sub_a)``: the forward, then the full
  backward, one after the other on the rank, on CPU and GPU alike.
- ``_add_send_recv`` (lines 1406–1522) lowers the order with communication: for an action
  with sub-actions it appends the sends of *all* of them after the action (lines
  1503–1511), so the forward's activations leave only when the paired backward has
  finished, and the backward's gradient right after.

So autopipe models a pair as two consecutive tasks on the rank, F then the full backward,
both sends posted at the end of the backward; that is exactly what runs, and it keeps
the step a longest path through a fixed task DAG (the order depends on no cost). A full
backward is written as a B task (input gradients) immediately followed by a W task
(weight gradients) of the same stage and micro-batch, the B's send posted after the W:
the rank is busy for B_s in all (the runtime's per-backward overhead once, on the B),
the micro-batch is released when it ends, and the path counts stay linear. Where the
two stages at the V's tip share a rank, torch hands tensors over in memory at once
(``set_local_fwd_input``); the consumer runs later on the same rank, so the place of that
zero-cost send changes nothing. ``ScheduleOrder.send_after`` records, per action, the
action after which its send is posted; ``autopipe.schedule.simulate`` and
``autopipe.partition.timeline`` both follow it.

    p = 2, m = 4 (stages 0 and 3 on rank 0, 1 and 2 on rank 1; (..) an overlapped pair)

    rank 0  0F0 0F1 0F2 3F0 3I0 3W0 3F1 (0F3 3B1) (3F2 0B0) 3B2 (3F3 0B1) 3B3 0I2 0W2 0I3 0W3
    rank 1  1F0 2F0 1F1 2F1 1F2 2B0 (2F2 1B0) (1F3 2B1) (2F3 1B1) 2B2 1B2 2I3 1I3 2W3 1W3
"""

from __future__ import annotations

from collections import defaultdict

TorchAction = tuple[int, str, int, int]
"""``(stage, kind, micro-batch, sent after)`` in torch's kinds (``F``, ``I``, ``W``, ``B``
the full backward) and the position after which the action's send is posted, as
``autopipe._torch_pipelining.torch_compute_order`` reads them from torch."""


def dualpipev_rank(num_ranks: int, microbatches: int, rank: int) -> list[TorchAction]:
    """One rank's compute actions, mirroring ``ScheduleDualPipeV._calculate_single_rank_operations``.

    The caller checks ``microbatches ≥ 2 · num_ranks`` (torch refuses fewer).
    """
    p, m, r = num_ranks, microbatches, rank
    first, second = r, 2 * p - 1 - r  # the rank's stages, depth order
    next_mb: dict[tuple[int, str], int] = defaultdict(int)
    weights: list[tuple[int, int]] = []  # I's whose W has not run, oldest first
    out: list[TorchAction] = []

    def act(stage: int, kind: str, sends_later: bool = False) -> None:
        # torch counts a full backward on the I and W counters alike
        mb = next_mb[stage, "I" if kind == "B" else kind]
        next_mb[stage, "I" if kind in ("B", "I") else kind] = mb + 1
        if kind == "B":
            next_mb[stage, "W"] += 1
        elif kind == "I":
            weights.append((stage, mb))
        out.append((stage, kind, mb, len(out) + 1 if sends_later else len(out)))

    def weight() -> None:
        if weights:
            stage, mb = weights.pop(0)
            next_mb[stage, "W"] += 1
            out.append((stage, "W", mb, len(out)))

    def overlap(forward: int, backward: int) -> None:
        # its send waits for the paired backward; torch sends nothing from the last stage,
        # nor to the rank's own next stage (the V's tip: handed over at once, in memory)
        act(forward, "F", sends_later=forward + 1 not in (first, second, 2 * p))
        act(backward, "B")

    for _ in range(2 * (p - r - 1)):                  # 1: forwards of the first stage
        act(first, "F")
    for _ in range(r + 1):                            # 2: both stages' forwards
        act(first, "F")
        act(second, "F")
    for _ in range(p - r - 1):                        # 3: zero bubble on the second
        act(second, "I")
        weight()
        act(second, "F")
    for i in range(m - 2 * p + r + 1):                # 4: the overlapped main phase
        if i == 0 and r == p - 1:                     # not overlapped: a smaller bubble
            act(first, "F")
            act(second, "B")
        else:
            overlap(first, second)
        overlap(second, first)
    for _ in range(p - r - 1):                        # 5
        act(second, "B")
        overlap(second, first)
    zero_bubble = False
    for i in range(r + 1):                            # 6: the second half zero bubble
        if i == (r + 1) // 2 and r % 2 == 1:
            zero_bubble = True
        act(second, "I" if zero_bubble else "B")
        if i == (r + 1) // 2 and r % 2 == 0:
            zero_bubble = True
        act(first, "I" if zero_bubble else "B")
    for _ in range(p - r - 1):                        # 7
        weight()
        act(first, "I" if zero_bubble else "B")
    for _ in range(r + 1):                            # 8: the weights left
        weight()
    return out
