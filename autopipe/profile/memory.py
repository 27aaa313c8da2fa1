"""Memory of parameters, gradients and optimizer states, per optimizer and dtype."""

from __future__ import annotations

from dataclasses import dataclass

from autopipe.errors import AutopipeError

# fp32 optimizer states kept per parameter (torch.optim implementations)
_STATES = {
    "adam": 2,          # exp_avg, exp_avg_sq
    "adamw": 2,
    "sgd": 0,           # plain SGD keeps nothing
    "sgd-momentum": 1,  # momentum_buffer
    "none": 0,          # inference-style accounting: no optimizer
}
OPTIMIZERS = tuple(_STATES)
_PAGE = 4096


def embedding_grad_bytes(param_bytes: int, output_bytes: int, index_bytes: int, microbatches: int) -> int:
    """Resident bytes of a CPU rank's embedding gradient on zero pages after a step's backwards.

    Only the rows the step reads are written: at most ``microbatches`` × tokens rows, each
    on its own pages plus at most two it shares with its neighbours, of ``output_bytes``
    per micro-batch in all. Tokens are at most ``index_bytes / 4`` (the indices the
    embedding saves for its backward, int32 or int64); with no saved indices the gradient
    is charged whole.

    Args:
        param_bytes: the embedding weight's bytes (the most the gradient can take).
        output_bytes: the embedding's output bytes, one micro-batch.
        index_bytes: the bytes the embedding saves for backward (its indices), one micro-batch.
        microbatches: micro-batches per step.
    """
    if index_bytes <= 0:
        return param_bytes
    tokens = index_bytes // 4
    return min(param_bytes, microbatches * (output_bytes + tokens * 2 * _PAGE))


@dataclass(frozen=True, slots=True, kw_only=True)
class ParamMemory:
    """Bytes that a set of parameters costs during training."""

    params: int
    grads: int
    optimizer: int
    step: int = 0
    """Bytes the optimizer step allocates while it runs and frees after it ([Note: the
    optimizer step's temporaries]); not part of ``total``."""

    @property
    def total(self) -> int:
        """params + grads + optimizer: what is held all the time."""
        return self.params + self.grads + self.optimizer


def param_memory(param_bytes: int, *, element_size: int = 4, optimizer: str = "adam",
                 fused: bool = False) -> ParamMemory:
    """Training memory of parameters that take ``param_bytes`` in a dtype of ``element_size`` bytes.

    Gradients have the parameters' dtype. Optimizer states are fp32 (fp64 for fp64
    parameters, as torch keeps them: until 2026-12-07 they were counted at half); under mixed
    precision (``element_size < 4``) an fp32 master copy of the weights is kept too
    (what Megatron and DeepSpeed do), unless the optimizer is ``none``.

    [Note: the optimizer step's temporaries]
    torch.optim's multi-tensor (foreach) Adam and AdamW compute ``sqrt(exp_avg_sq)`` for
    every parameter at once into a new list of fp32 tensors, one the size of the fp32
    states (``torch._foreach_sqrt`` in ``_multi_tensor_adam``); SGD updates in place.
    With 16-bit parameters ``MasterWeights`` also widens every gradient to fp32 for the
    step. These live only during the step, when no activation is held, so a stage's
    peak is its held bytes plus the larger of its activations and this ``step``
    (``autopipe.partition.costs.StageCost.memory``). Measured on an H200 (docs/gpu.md):
    the MLP's training peak was 0.52 GiB over the prediction without it, its fp32
    parameters 0.52 GiB.
    On CPU ranks autopipe steps Adam with torch's fused kernel ([Note: fused Adam on CPU]
    in ``autopipe._optimizers``), which updates parameters and states in place: no
    temporaries (``fused=True``; measured with ``benchmarks/bench_init_memory.py``: a
    rank's resident peak did not move in its Adam steps).

    Raises:
        AutopipeError: unknown optimizer.
    """
    if optimizer not in _STATES:
        raise AutopipeError(f"unknown optimizer {optimizer!r}",
                            hint=f"choose one of {', '.join(OPTIMIZERS)}")
    numel = param_bytes // element_size
    wide = max(4, element_size)  # torch keeps a float64 parameter's states in float64
    states = _STATES[optimizer] * wide * numel
    if element_size < 4 and optimizer != "none":
        states += 4 * numel  # fp32 master weights
    grads = 0 if optimizer == "none" else param_bytes
    step = wide * numel if optimizer in ("adam", "adamw") and not fused else 0
    if element_size < 4 and optimizer != "none":
        step += 4 * numel  # the gradients widened to fp32 for the masters
    return ParamMemory(params=param_bytes, grads=grads, optimizer=states, step=step)
