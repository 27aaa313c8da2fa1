"""Training options shared by the pipeline trainer and the single-process reference."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from autopipe.errors import AutopipeError

OPTIMIZERS = ("sgd", "sgd-momentum", "adam", "adamw")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainConfig:
    """How to train: steps, optimizer, device choice, failure timeout."""

    steps: int
    """Optimizer steps to run."""
    lr: float = 1e-3
    """Learning rate."""
    optimizer: str = "adam"
    """``sgd``, ``sgd-momentum`` (0.9), ``adam`` or ``adamw`` (torch.optim defaults otherwise)."""
    device: str = "auto"
    """``auto`` (the plan's device: CUDA for ``cuda*`` stages, CPU for ``cpu``), ``cpu`` or ``cuda``."""
    timeout_s: float = 300.0
    """A rank waiting this long on a peer (rendezvous, send, receive) gives up with an error."""
    pin_malloc: bool = True
    """CPU ranks keep freed memory for reuse instead of faulting it back in every micro-batch
    (``autopipe._malloc``; skipped where ``MALLOC_*_`` variables are set)."""
    pin_cores: bool = True
    """CPU ranks on one machine each keep to their own share of its cores
    (``autopipe.runtime.affinity``; skipped where the process is already bound)."""

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise AutopipeError(f"--steps is {self.steps}", hint="train at least 1 step")
        if not self.lr > 0:
            raise AutopipeError(f"--lr is {self.lr}", hint="use a positive learning rate, e.g. 1e-3")
        if self.optimizer not in OPTIMIZERS:
            raise AutopipeError(f"unknown optimizer {self.optimizer!r}",
                                hint=f"use one of {', '.join(OPTIMIZERS)}")
        if self.device not in DEVICES:
            raise AutopipeError(f"unknown device {self.device!r}", hint=f"use one of {', '.join(DEVICES)}")
        if not self.timeout_s > 0:
            raise AutopipeError(f"--timeout is {self.timeout_s}", hint="use a positive number of seconds")


class Stepper(Protocol):
    """What the trainers use of an optimizer."""

    def zero_grad(self, set_to_none: bool = True) -> None: ...

    def step(self) -> Any: ...


def make_optimizer(params: Iterable[torch.nn.Parameter], config: TrainConfig) -> Stepper | None:
    """The optimizer ``config`` names over ``params`` (duplicates removed, order kept); None if none.

    Parameters in a 16-bit float dtype are trained through fp32 master copies
    (``MasterWeights``), as the planner's memory model assumes.
    """
    unique = list({id(p): p for p in params if p.requires_grad}.values())
    if not unique:
        return None
    if any(_low_precision(p) for p in unique):
        return MasterWeights(unique, lambda masters: _torch_optimizer(masters, config))
    return _torch_optimizer(unique, config)


def _torch_optimizer(params: list[torch.nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr)
    if config.optimizer == "sgd-momentum":
        return torch.optim.SGD(params, lr=config.lr, momentum=0.9)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr)
    return torch.optim.Adam(params, lr=config.lr)


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
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

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
