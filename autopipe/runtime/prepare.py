"""What every rank does before it joins the process group: trace, check the plan, split the model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from autopipe.batching import example_batch
from autopipe.errors import SpecError
from autopipe.plan_format import Plan
from autopipe.runtime.meta import StageMeta, stage_metas
from autopipe.runtime.packing import pack_cuts
from autopipe.runtime.placement import check_world_size
from autopipe.runtime.split import Split
from autopipe.runtime.validate import model_constants, validate_plan
from autopipe.spec import ModelSpec, example_target
from autopipe.trace import Graph, trace


@dataclass
class Prepared:
    """Everything a rank needs before it joins the process group; built identically on every rank."""

    graph: Graph
    split: Split
    metas: list[StageMeta]
    constants: dict[str, Any]
    """Model inputs that are not tensors, baked into stage 0."""
    input_names: list[str]
    """Placeholder names of the model's flat inputs, in order."""

    def flat_batch(self, spec: ModelSpec, inputs: Sequence[Any], device: torch.device,
                   step: int | None = None, microbatches: int | None = None) -> list[torch.Tensor]:
        """A batch's inputs as the model's flat tensor inputs on ``device`` (what stage 0 is fed).

        Args:
            spec: the spec (its example keyword inputs complete the batch's positional ones).
            inputs: the batch's positional model inputs, micro-batches stacked on dim 0.
            device: where stage 0 runs.
            step: the step number, for messages (1-based); None where unknown.
            microbatches: with it, each tensor input must be that many of the example
                micro-batch's, stacked on dim 0: the shapes the stages were built for.

        Raises:
            SpecError: a non-tensor input differs from the example micro-batch's, or a tensor
                input has another shape than ``microbatches`` example micro-batches.
        """
        flat = self.graph.flat_inputs(tuple(inputs), spec.example_kwargs)
        example = self.graph.flat_inputs(tuple(spec.example_inputs), spec.example_kwargs)
        when = f" in step {step}" if step is not None else ""
        tensors = []
        for name, v, ex in zip(self.input_names, flat, example):
            if name in self.constants:
                if not _same(v, self.constants[name]):
                    raise SpecError(f"input {name!r} is {v!r}{when} but {self.constants[name]!r} "
                                    f"in the example micro-batch",
                                    hint="non-tensor inputs must stay the same in every batch")
                continue
            # another shape made a peer abort in gloo ("Received data size doesn't match") or the
            # loss fail on its shapes: the stages' buffers are built for the example's
            if (microbatches is not None and isinstance(v, torch.Tensor) and isinstance(ex, torch.Tensor)
                    and ex.dim() > 0 and tuple(v.shape) != (ex.shape[0] * microbatches, *ex.shape[1:])):
                want = (ex.shape[0] * microbatches, *ex.shape[1:])
                raise SpecError(f"input {name!r}{when} has shape {tuple(v.shape)}, but the plan's stages take "
                                f"{microbatches} micro-batches of {tuple(ex.shape)}: {want}",
                                hint=f"pass {microbatches} micro-batches as spec.batch gives them (with replicas, "
                                     "each replica's share: pipe.replicas.share), or make a plan for this shape")
            # contiguous wherever they come from: a copy to CUDA makes a sliced batch contiguous
            # while it stays strided on the CPU, and torch 2.11 refuses a stride it did not expect
            tensors.append(v.to(device).contiguous())
        return tensors


def check_target(spec: ModelSpec, target: Any, microbatches: int, step: int | None = None,
                 one: Any = None) -> None:
    """Raise unless a batch's ``target`` splits into ``microbatches`` targets of one micro-batch.

    The schedule cuts the target along dim 0 into ``microbatches`` pieces, as the inputs.
    A target of other rows than ``microbatches`` times one micro-batch's (``spec.batch(1)``'s,
    where its dim 0 is the example's batch) paired each micro-batch's output with the
    wrong rows: torch's loss failed on the shapes deep in a step, or, where they
    broadcast (``mse_loss`` against one row), gave another loss without an error.

    Args:
        spec: the spec (its example inputs give the micro-batch's samples).
        target: the batch's target.
        microbatches: micro-batches per step.
        step: the step number, for messages (1-based); None where unknown.
        one: one micro-batch's target, where known (``example_target(spec)``; drawn if None).

    Raises:
        SpecError: a 0-dim target, or one of the wrong number of rows.
    """
    if not isinstance(target, torch.Tensor):
        return
    when = f" in step {step}" if step is not None else ""
    if target.dim() == 0:
        raise SpecError(f"the target{when} is a 0-dim tensor, which cannot be cut into {microbatches} micro-batches",
                        hint="give each sample its target, stacked on dim 0 as the inputs are")
    one = example_target(spec) if one is None else one
    batch = example_batch(spec.example_inputs, spec.example_kwargs)
    if not isinstance(one, torch.Tensor) or one.dim() == 0 or one.shape[0] != batch:
        return  # not one row per sample: nothing to count against
    want = batch * microbatches
    if target.shape[0] != want:
        raise SpecError(f"the target{when} has shape {tuple(target.shape)}, but the plan's {microbatches} "
                        f"micro-batches of {batch} samples need {want} rows: {(want, *one.shape[1:])}",
                        hint="pass the target spec.batch gives with the inputs (with replicas, each "
                             "replica's share: pipe.replicas.share)")


def prepare(spec: ModelSpec, plan: Plan, world_size: int, graph: Graph | None = None, *,
            pack: bool = True) -> Prepared:
    """Trace the model and check the plan against it and the world size; split it into stages.

    Runs before any process group exists, so a wrong plan stops every rank (or the
    launcher) with a clear error instead of failing mid-step.

    The plan is checked with ``validate_plan``, as every command that reads a plan does.
    ``pack``: each cut sends its values as one message ([Note: one message per cut] in
    ``autopipe.runtime.packing``); False: one tensor per value, as torch's schedules send
    them (``benchmarks/bench_cut_messages.py`` compares the two).

    Raises:
        PlanMismatchError: the plan was made for another model, micro-batch shape or world size.
        PlanError: the plan cannot be run (a non-tensor crosses a cut, unknown schedule, ...).
        SpecError: the spec has tensor keyword inputs (batches are positional).
    """
    check_world_size(plan, world_size)
    tensor_kwargs = sorted(k for k, v in spec.example_kwargs.items() if isinstance(v, torch.Tensor))
    if tensor_kwargs:
        raise SpecError(f"example keyword input {tensor_kwargs[0]!r} is a tensor, but spec.batch() "
                        f"gives positional inputs only",
                        hint="make the model take its tensors positionally")
    if graph is None:
        graph = trace(spec.model, spec.example_inputs, spec.example_kwargs)
    constants = model_constants(graph, spec)
    split = validate_plan(plan, graph, constants=constants)
    assert split is not None
    flat = graph.flat_inputs(spec.example_inputs, spec.example_kwargs)
    names = [n.name for n in graph.gm.graph.nodes if n.op == "placeholder"]
    # the model's inputs go in contiguous (see Prepared.flat_batch): torch checks their strides
    inputs = [v.contiguous() for v in flat if isinstance(v, torch.Tensor)]
    metas = stage_metas(split, inputs)
    if pack:  # [Note: one message per cut]
        alone = {send.tensor for stage in plan.stages for send in stage.sends if send.forward_only}
        metas = pack_cuts(split, metas, alone)
    return Prepared(graph=graph, split=split, metas=metas, constants=constants, input_names=names)


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return a is b
