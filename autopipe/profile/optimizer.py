"""What an optimizer step costs on a device: seconds per parameter tensor and per element.

[Note: the optimizer step in the plan]
Each stage steps its own parameters once per step, after its last backward (the
runtime divides the gradients by the micro-batch count first). The step is a
function of how many tensors and elements the stage holds: ``t = a·tensors +
b·elements``. ``measure_rates`` times each optimizer autopipe trains with
(``autopipe._optimizers``, fp32 masters for 16-bit parameters included) on many
small and a few large tensors in the profile's dtype and solves for a and b. The large
ones hold 8 M elements together (224 MiB with Adam's gradients and moments), more than a
core's caches hold, as a stage's parameters are: on 2 M (56 MiB) this machine's CPU read
b 1.13 ns an element against 1.70 at 8 M and 1.64 at 16 M, and an Adam step training a
BERT stage measured 1.3–1.6 × the price the smaller set gave.
``estimate_rates`` prices the bytes a step reads and writes on the device spec's
bandwidth, plus one kernel overhead per tensor. The planner runs each stage's step
as the last task of its rank's timeline ([Note: the step time is a longest path] in
``autopipe.partition.timeline``), so the ILP's objective and the plan's prediction
both include it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from autopipe._optimizers import OPTIMIZERS, build_optimizer
from autopipe.profile._timer import step_clock
from autopipe.profile.devices import DeviceSpec

Rates = dict[str, tuple[float, float]]
"""Optimizer name → (seconds per parameter tensor, seconds per parameter element)."""

_SMALL = [256] * 128
_BIG = [1 << 22] * 2
# fp32 words an element's step reads and writes: the parameter, its gradient, the states
_WORDS = {"sgd": 3, "sgd-momentum": 5, "adam": 7, "adamw": 7}


def _step_s(name: str, shapes: list[int], device: torch.device, dtype: torch.dtype,
            repeats: int) -> float:
    params = [nn.Parameter(torch.randn(n, device=device, dtype=dtype)) for n in shapes]
    grads = [torch.randn_like(p) for p in params]
    opt = build_optimizer(params, name, 1e-3)
    assert opt is not None
    clock = step_clock(device)
    times = []
    for i in range(2 + repeats):
        for p, g in zip(params, grads):
            p.grad = g
        t0 = clock()
        for p in params:
            assert p.grad is not None
            p.grad.div_(2.0)  # the runtime's averaging over micro-batches
        opt.step()
        if i >= 2:
            times.append(clock() - t0)
        opt.zero_grad(set_to_none=True)
    return sorted(times)[len(times) // 2]


def measure_rates(device: torch.device, dtype: torch.dtype, repeats: int = 5,
                  names: Sequence[str] = OPTIMIZERS) -> Rates:
    """Per optimizer of ``names``, (per tensor, per element) seconds of its step on ``device``
    in ``dtype``."""
    out: Rates = {}
    n1, e1, n2, e2 = len(_SMALL), sum(_SMALL), len(_BIG), sum(_BIG)
    for name in names:
        small = _step_s(name, _SMALL, device, dtype, repeats)
        big = _step_s(name, _BIG, device, dtype, repeats)
        per_element = max(0.0, (big * n1 - small * n2) / (e2 * n1 - e1 * n2))
        out[name] = (max(0.0, (small - per_element * e1) / n1), per_element)
    return out


def estimate_rates(spec: DeviceSpec, dtype: torch.dtype) -> Rates:
    """Per optimizer, (per tensor, per element) seconds on ``spec``: the bytes each element's
    step moves over the memory bandwidth, and one kernel overhead per tensor.

    16-bit parameters step on fp32 masters: the gradient is read and widened, the
    master rounded back into the parameter (4 more 16-bit/fp32 accesses).
    """
    itemsize = torch.empty((), dtype=dtype).element_size()
    extra = 0 if itemsize >= 4 else 2 * itemsize + 2 * 4  # widen the gradient, round the master back
    return {name: (spec.kernel_overhead_s, (4 * words + extra) / spec.memory_bandwidth)
            for name, words in _WORDS.items()}
