"""The optimizers autopipe trains with, and fp32 master weights for 16-bit parameters.

Below the profiler and the runtime alike: the runtime trains with these, and the
profiler times their step on the device ([Note: master weights]).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

import torch

OPTIMIZERS = ("sgd", "sgd-momentum", "adam", "adamw")
DEVICES = ("auto", "cpu", "cuda")
"""Where ``autopipe train`` runs (``auto``: CUDA when there is one)."""


class Stepper(Protocol):
    """What the trainers use of an optimizer."""

    def zero_grad(self, set_to_none: bool = True) -> None: ...

    def step(self) -> Any: ...


def clear_grads(params: Iterable[torch.nn.Parameter], set_to_none: bool = True) -> None:
    """Every parameter's gradient dropped (``set_to_none``) or zeroed, as ``zero_grad`` does."""
    for p in params:
        if set_to_none:
            p.grad = None
        elif p.grad is not None:
            p.grad.zero_()


def build_optimizer(params: Iterable[torch.nn.Parameter], name: str, lr: float) -> Stepper | None:
    """The optimizer ``name`` over ``params`` (duplicates removed, order kept); None if none.

    Parameters in a 16-bit float dtype are trained through fp32 master copies
    (``MasterWeights``), as the planner's memory model assumes.
    """
    unique = list({id(p): p for p in params if p.requires_grad}.values())
    if not unique:
        return None
    if any(_low_precision(p) for p in unique):
        return MasterWeights(unique, lambda masters: _torch_optimizer(masters, name, lr))
    return _torch_optimizer(unique, name, lr)


def _torch_optimizer(params: list[torch.nn.Parameter], name: str, lr: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "sgd-momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    kernel = _adam_kernel(params)
    adam = (torch.optim.AdamW if name == "adamw" else torch.optim.Adam)(params, lr=lr, **kernel)
    if kernel.get("fused"):
        _states_up_front(adam)
    return adam


def _states_up_front(adam: torch.optim.Optimizer) -> None:
    """Give every parameter Adam's fresh state now, as its first step would.

    [Note: Adam's states made up front]
    torch makes Adam's two moments in the first ``step``, after the first forward and
    backward have freed their activations: on a CPU rank, whose freed memory malloc keeps
    ([Note: pinned malloc on CPU ranks]), the moments then fill the holes the step's
    scratch left, and every later step needs fresh memory for its scratch above them.
    Made before any step, the moments lie below the scratch, which each step reuses: the
    16-layer Llama of ``benchmarks/bench_init_memory.py`` peaked 38 MiB lower on its first
    rank (2,455 → 2,417 MiB), 6 MiB on its second. The state is what torch's first step
    would make (zero moments, step 0), loaded through ``load_state_dict``, so every step
    computes the same bits.
    """
    params = [p for group in adam.param_groups for p in group["params"]]
    fresh = {i: {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                 "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
             for i, p in enumerate(params)}
    adam.load_state_dict({"state": fresh, "param_groups": adam.state_dict()["param_groups"]})


def _adam_kernel(params: list[torch.nn.Parameter]) -> dict[str, Any]:
    """``fused=True`` for parameters all on the CPU, else torch's default.

    [Note: fused Adam on CPU]
    torch's default Adam on CPU tensors is its single-tensor loop, which makes
    temporaries per parameter in every step (``exp_avg_sq.sqrt() / bias_correction``
    and the like), the size of that parameter: with a 131 MB vocabulary matrix, a CPU
    rank's peak rose by that much in the optimizer step (125 MiB in the second step of
    ``benchmarks/bench_init_memory.py``'s stage 0, 30 more in the third). The fused
    kernel updates parameter and states in place, in one pass: that rank peaked 158 MiB
    lower, with the same losses to 6 digits (its updates may differ from the loop's in
    the last bit; the one-process reference uses the same kernel). CUDA keeps torch's
    default (foreach), whose step time the GPU calibrations measured.
    """
    if params and all(p.device.type == "cpu" and p.is_floating_point() for p in params):
        return {"fused": True}
    return {}


def _low_precision(p: torch.Tensor) -> bool:
    return p.is_floating_point() and p.element_size() < 4


class MasterWeights:
    """An optimizer that updates fp32 master copies of 16-bit parameters.

    [Note: master weights]
    A bf16 or fp16 parameter keeps an fp32 copy; the optimizer (and so its states)
    works on the copies, and each step rounds them back into the parameters.
    torch.optim on the 16-bit parameters themselves would keep 16-bit states and
    lose every update smaller than the weight's rounding step. It is also what the
    planner charges a 16-bit model (``autopipe.profile.memory.param_memory``: an fp32
    master and fp32 states per parameter): an H200 run of a bf16 Llama measured
    0.59 of the predicted peak while ``autopipe train`` still kept bf16 states
    (docs/gpu.md). fp32 parameters are updated in place, as before.
    """

    def __init__(self, params: list[torch.nn.Parameter],
                 build: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]) -> None:
        self.params = params
        self.masters = [torch.nn.Parameter(p.detach().float()) if _low_precision(p) else p
                        for p in params]
        self.inner = build(self.masters)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the parameters' gradients (the masters' are cleared after each step)."""
        clear_grads(self.params, set_to_none)

    def step(self) -> None:
        """One step on the masters with the parameters' gradients, rounded back into the parameters."""
        for p, m in zip(self.params, self.masters):
            if m is not p:
                m.grad = None if p.grad is None else p.grad.float()
        self.inner.step()
        with torch.no_grad():
            for p, m in zip(self.params, self.masters):
                if m is not p:
                    p.copy_(m)
                    m.grad = None  # the fp32 gradient copies live only during the step
