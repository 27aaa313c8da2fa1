"""Training options shared by the pipeline trainer and the single-process reference."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from autopipe._jsonio import check_writable
from autopipe._optimizers import DEVICES, OPTIMIZERS, MasterWeights, Stepper, build_optimizer
from autopipe.errors import AutopipeError

__all__ = ["DEVICES", "OPTIMIZERS", "MasterWeights", "Stepper", "TrainConfig", "make_optimizer"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainConfig:
    """How to train: steps, optimizer, device choice, failure timeout, checkpoints."""

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
    flush_denormal: bool = True
    """CPU ranks flush subnormal floats to zero, as the profiles the plan was made from
    timed them ([Note: subnormals in training] in ``autopipe._subnormals``)."""
    save: str | None = None
    """Checkpoint directory to save into (``autopipe.runtime.checkpoint``), at the end and
    every ``save_every`` steps; None: no checkpoints."""
    save_every: int | None = None
    """Save every this many steps too (needs ``save``)."""
    resume: str | None = None
    """Checkpoint directory to continue from (its newest complete checkpoint); ``steps``
    counts the steps done before too."""
    init: str | None = None
    """Weights of the unsplit model (``.safetensors``, a Hugging Face folder, a torch ``.pt``):
    each rank reads its own stages' tensors (``autopipe.runtime.materialize``). None: the
    model's own weights, or for a meta-built model the spec's initialiser. Not read when
    ``resume`` is set: the checkpoint holds the weights."""
    timeline: str | None = None
    """Write every rank's timed actions and the plan's simulated step here, as one Chrome
    trace (``autopipe.runtime.timeline``; [Note: a measured timeline]); None: not timed."""
    seed: int = 0
    """The run's seed: the model's random ops (dropout and the like) draw per node, step and
    micro-batch from it, the same whatever the plan ([Note: random draws per node and
    micro-batch] in ``autopipe.runtime.draws``), and a meta-built model's initialisers."""

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise AutopipeError(f"--steps is {self.steps}", hint="train at least 1 step")
        if not 0 < self.lr < math.inf:  # inf made every loss after the first NaN, without an error
            raise AutopipeError(f"--lr is {self.lr}", hint="use a positive learning rate, e.g. 1e-3")
        if self.optimizer not in OPTIMIZERS:
            raise AutopipeError(f"unknown optimizer {self.optimizer!r}",
                                hint=f"use one of {', '.join(OPTIMIZERS)}")
        if self.device not in DEVICES:
            raise AutopipeError(f"unknown device {self.device!r}", hint=f"use one of {', '.join(DEVICES)}")
        if not 0 < self.timeout_s < math.inf:  # inf: an OverflowError from the rendezvous on every rank
            raise AutopipeError(f"--timeout is {self.timeout_s}", hint="use a positive number of seconds")
        if self.save_every is not None and self.save is None:
            raise AutopipeError("--save-every needs --save DIR", hint="name the checkpoint directory with --save")
        if self.save_every is not None and self.save_every < 1:
            raise AutopipeError(f"--save-every is {self.save_every}", hint="save every 1 or more steps")
        if self.timeline is not None:
            check_writable(self.timeline)  # before the run, not after it


def make_optimizer(params: Iterable[torch.nn.Parameter], config: TrainConfig) -> Stepper | None:
    """The optimizer ``config`` names over ``params`` (``autopipe._optimizers.build_optimizer``)."""
    return build_optimizer(params, config.optimizer, config.lr)
