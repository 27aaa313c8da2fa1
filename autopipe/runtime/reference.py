"""Single-process training of the traced model, micro-batch by micro-batch: what a pipeline must equal."""

from __future__ import annotations

import torch

from autopipe.runtime.draws import drawing, seeded_draws
from autopipe.runtime.optim import Stepper, TrainConfig, make_optimizer
from autopipe.spec import ModelSpec
from autopipe.trace import Graph


def reference_train(spec: ModelSpec, graph: Graph, microbatches: int,
                    config: TrainConfig) -> list[float]:
    """Train ``graph.gm`` in place as the pipeline does, in one process; return the per-step losses.

    Each step draws ``spec.batch(microbatches, step)``, splits every input along dim 0 into
    ``microbatches`` chunks (as torch's schedules do), runs forward and backward per chunk in
    order, divides the accumulated gradients by the chunk count and takes one optimizer step.
    The model's random ops draw per node, step and micro-batch from ``config.seed``, as a
    pipeline's stages do ([Note: random draws per node and micro-batch]).
    """
    gm = graph.gm
    optimizer = make_optimizer(gm.parameters(), config)
    with seeded_draws(gm):
        return _train(spec, graph, microbatches, config, optimizer)


def _train(spec: ModelSpec, graph: Graph, microbatches: int, config: TrainConfig,
           optimizer: Stepper | None) -> list[float]:
    gm = graph.gm
    losses = []
    for step in range(config.steps):
        inputs, target = spec.batch(microbatches, step)
        flat = graph.flat_inputs(tuple(inputs), spec.example_kwargs)
        chunks = [torch.tensor_split(v, microbatches) if isinstance(v, torch.Tensor) else [v] * microbatches
                  for v in flat]
        targets = torch.tensor_split(target, microbatches)
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
        step_losses = []
        for i in range(microbatches):
            with drawing(config.seed, step + 1, i):
                out = graph.unflatten_output(gm(*[c[i] for c in chunks]))
                loss = spec.loss_fn(out, targets[i])
                torch.autograd.backward(loss)
            step_losses.append(loss.detach().float())
        for p in gm.parameters():
            if p.grad is not None:
                p.grad.div_(microbatches)
        if optimizer is not None:
            optimizer.step()
        losses.append(torch.stack(step_losses).mean().item())
    return losses
