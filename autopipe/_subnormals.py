"""Flushing subnormal floats to zero on the CPU: profiles time with it, and CPU ranks train with it.

# [Note: subnormals in training]
Profiles and the stage timings of a plan run on the CPU with subnormal floats
flushed to zero ([Note: subnormals at initialisation] in ``autopipe.profile._setup``):
a model can spend most of its time on the CPU's slow path for subnormals, and that
is not the time training needs. Training with them unflushed did spend it. On the
tied LM (``examples/tied_lm.py``: a 32,768-word head), 2 gloo ranks, one thread each
(2026-12-03):

- the softmax of its loss holds subnormal probabilities for most of the vocabulary,
  so most of the head's gradient is subnormal; Adam squares it. The optimizer step
  took 14.7–21.6 ms on each rank (per step, averaged over runs of 12–30 steps, slower
  in the earlier steps) against 4.5–7.4 ms with subnormals flushed, which is what the
  plan priced (4.9 and 7.2 ms: ``measure_rates`` steps on random values);
- the training step's median was 182.9 and 185.1 ms unflushed, 173.4 and 174.5 ms
  flushed (30 steps each, runs in turns);
- ``autopipe train --launch 2`` (6 steps): the first step took 3,540 ms unflushed and
  252 ms flushed, the second 358 and 194, the last four 186–204 and 170–173;
- in one process at initialisation, the whole model's forward, loss and backward took
  823–837 ms unflushed and 55–64 ms flushed.

A subnormal is below 1.2e-38 in fp32; flushed, it counts as zero. Those 6 steps' losses
were the same to the 6 decimals printed (101.992096 first, 38.501095 last): an Adam
update of such an element is about 1e-34 unflushed and 0 flushed, against weights of
1e-2. So ``autopipe train`` flushes them on CPU ranks (``TrainConfig.flush_denormal``, ``--no-flush-denormal``);
``build(flush_denormal=True)`` does it for a loop of one's own, and ``Pipe.close``
puts the thread back as it found it.
"""

from __future__ import annotations

import torch

_SUBNORMAL = 1e-39
"""Subnormal in fp32 (the smallest normal is about 1.18e-38)."""


def flushing() -> bool:
    """Whether this thread's CPU arithmetic flushes subnormal floats to zero."""
    return bool((torch.tensor([_SUBNORMAL], dtype=torch.float32) * 1.0).item() == 0.0)


def flush_subnormals(on: bool) -> bool:
    """Flush subnormal floats to zero on this thread's CPU arithmetic (and the threads it
    starts afterwards), or stop. Returns whether the setting changed; False, too, where the
    CPU cannot flush them."""
    if flushing() == on:
        return False
    return bool(torch.set_flush_denormal(on)) and flushing() == on
