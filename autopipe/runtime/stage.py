"""This rank's ``PipelineStage``s and the torch schedule that drives them."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.fx as fx
from torch.distributed.pipelining import PipelineStage

from autopipe._torch_pipelining import ReceivedWhenNeeded, pipeline_stage_class, schedule_class
from autopipe.errors import PlanError
from autopipe.plan_format import Plan
from autopipe.runtime.draws import Draws, seed_draws
from autopipe.runtime.grad_accum import fuse_weight_grads
from autopipe.runtime.meta import StageMeta
from autopipe.runtime.modes import follow_modes
from autopipe.runtime.placement import rank_of_stages, schedule_kind
from autopipe.runtime.recompute import recompute_once_per_weight_pass
from autopipe.runtime.split import Split, retarget_devices
from autopipe.runtime.split_backward import WeightWork, backward_input, backward_weight


@dataclass
class Pipeline:
    """What one rank runs: its stages, and the schedule over all of them."""

    stages: list[PipelineStage]
    """This rank's stages, in stage order."""
    schedule: Any
    """A ``torch.distributed.pipelining`` schedule (single- or multi-stage)."""
    has_first: bool
    """This rank runs stage 0 (feeds the inputs)."""
    has_last: bool
    """This rank runs the last stage (computes the loss)."""

    @property
    def indices(self) -> tuple[int, ...]:
        """Stage indices on this rank."""
        return tuple(s.stage_index for s in self.stages)

    def modules(self) -> list[torch.nn.Module]:
        """The stage modules (the trainable parts) of this rank."""
        return [s.submod for s in self.stages]


def build_pipeline(
    split: Split,
    metas: Sequence[StageMeta],
    plan: Plan,
    rank: int,
    device: torch.device,
    loss_fn: Callable[[Any, torch.Tensor], torch.Tensor],
    group: dist.ProcessGroup | None = None,
    tied: Collection[str] = (),
    draws: Draws | None = None,
) -> Pipeline:
    """Build the PipelineStages of ``rank`` on ``device`` and the plan's schedule over them.

    The stages get their input and output shapes from ``metas`` (torch's static mode),
    so no shape-inference pass runs. Gradients are not scaled by the schedule: the
    trainer divides them once by the micro-batch count (a parameter that two stages of
    one rank share would otherwise be divided twice). On CPU ranks the embeddings' and
    linear layers' weight gradients are added into ``.grad`` in place, bit for bit as
    autograd would (``autopipe.runtime.grad_accum``).

    Args:
        split: the model's stages.
        metas: each stage's input/output tensors for one micro-batch.
        plan: the plan (schedule, micro-batches, placement).
        rank: this process's rank in the pipeline (its rank in ``group``).
        device: where this rank computes.
        loss_fn: ``loss(last_stage_output_tuple, target)``.
        group: the pipeline's process group (one replica's ranks, in stage order); None:
            the default group.
        tied: names of parameters that share one tensor (``Graph.tied``, every alias):
            their gradients are summed over their copies after the backwards.
        draws: the run's seed and step for the stages' random nodes, which then draw per
            node and micro-batch ([Note: random draws per node and micro-batch]); None:
            from the process's generator.

    Raises:
        PlanError: torch refuses the schedule for this plan (e.g. too few micro-batches).
    """
    kind = schedule_kind(plan.schedule)
    ranks = rank_of_stages(plan)
    n = plan.num_stages
    stages = []
    stage_class = _stage_class()
    mine = [i for i in range(n) if ranks[i] == rank]
    modules = {s: split.stages[s].module.to(device) for s in mine}
    fuse_as_planned(list(modules.values()), plan, device, tied)
    for s, module in modules.items():
        retarget_devices(module, device)
        if draws is not None:
            seed_draws(module)
        follow_modes(module)  # [Note: traced modes follow train and eval]
        stage = stage_class(module, s, n, device,
                            input_args=metas[s].inputs, output_args=metas[s].outputs, group=group)
        stage.draws = draws
        if plan.stages[s].recompute:  # [Note: recomputed regions]
            recompute_once_per_weight_pass(stage)
        stages.append(stage)
    if not stages:
        raise PlanError(f"rank {rank} runs no stage of the plan (stage ranks {ranks})",
                        hint="run as many processes as the plan has ranks")
    cls = schedule_class(kind.torch_class)
    assert cls is not None, "schedule_kind checked the class exists"
    try:
        if kind.placement == "single":
            schedule = cls(stages[0], plan.microbatches, loss_fn=loss_fn, scale_grads=False)
        else:
            schedule = cls(stages, plan.microbatches, loss_fn=loss_fn, scale_grads=False)
    except (ValueError, RuntimeError) as e:
        raise PlanError(f"torch's {kind.torch_class} refuses this plan: {e}",
                        hint="change --microbatches or --schedule and regenerate the plan") from e
    return Pipeline(stages=stages, schedule=schedule, has_first=ranks[0] == rank,
                    has_last=ranks[-1] == rank)


def fuse_as_planned(modules: Sequence[torch.nn.Module], plan: Plan, device: torch.device,
                    tied: Collection[str]) -> list[str]:
    """Route one rank's stage modules' embedding and linear weight gradients in place, as
    ``build_pipeline`` runs them for ``plan`` ([Note: weight gradients accumulated in place]);
    returns the weights so routed.

    A split backward takes weight gradients in a pass of its own, so it keeps autograd's; a
    tied weight's gradient (``tied``: every alias's name) is summed over its copies after the
    backwards, as every gradient is averaged over replicas, so it is made whole.
    """
    return fuse_weight_grads([m for m in modules if isinstance(m, fx.GraphModule)], device,
                             splits_backward=schedule_kind(plan.schedule).splits_backward,
                             whole=None if plan.replicas > 1 else tied)


@functools.cache
def _stage_class() -> type[Any]:
    """This torch's PipelineStage class, its split backward autopipe's ([Note: split backward])."""
    base = pipeline_stage_class()

    class Stage(ReceivedWhenNeeded, base):  # type: ignore[misc, valid-type]
        draws: Draws | None = None
        """The run's seed and step: each micro-batch's forward and backward draw for it."""

        def _drawing(self, chunk: int) -> contextlib.AbstractContextManager[None]:
            return contextlib.nullcontext() if self.draws is None else self.draws.microbatch(chunk)

        def forward_one_chunk(self, fwd_chunk_id: int, *args: Any, **kwargs: Any) -> Any:
            with self._drawing(fwd_chunk_id):
                return super().forward_one_chunk(fwd_chunk_id, *args, **kwargs)

        def backward_one_chunk(self, bwd_chunk_id: int, *args: Any, **kwargs: Any) -> Any:
            with self._drawing(bwd_chunk_id):  # a recomputed region draws again as it did
                return super().backward_one_chunk(bwd_chunk_id, *args, **kwargs)

        def backward_weight_one_chunk(self, bwd_chunk_id: int, *args: Any, **kwargs: Any) -> Any:
            with self._drawing(bwd_chunk_id):
                return super().backward_weight_one_chunk(bwd_chunk_id, *args, **kwargs)

        def backward_maybe_with_nosync(self, backward_type: str, bwd_kwargs: dict[str, Any],
                                       last_backward: bool = False) -> Any:
            # stage modules are never DDP- or FSDP-wrapped here (replicas sync their own way),
            # so torch's wrapper handling has nothing to do for I and W
            if backward_type == "input":
                return backward_input(bwd_kwargs["stage_output"], bwd_kwargs["output_grads"],
                                      bwd_kwargs["input_values"], self.submod.parameters())
            if backward_type == "weight":
                work = bwd_kwargs["param_groups"]
                assert isinstance(work, WeightWork), "W follows this stage's own I"
                backward_weight(work)
                return (), None
            return super().backward_maybe_with_nosync(backward_type, bwd_kwargs, last_backward=last_backward)

    Stage.__name__ = Stage.__qualname__ = f"Autopipe{base.__name__}"
    return Stage
