"""Shapes, dtypes and requires_grad of every stage's inputs and outputs, found without running the model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.func import functional_call
from torch.fx.experimental.symbolic_shapes import ShapeEnv

from autopipe._torch_pipelining import FakeTensorMode
from autopipe.errors import PlanError
from autopipe.runtime.split import Split
from autopipe.trace.graph import checks_only


@dataclass(frozen=True, slots=True)
class StageMeta:
    """Example tensors (on the meta device) of one stage's inputs and outputs for one micro-batch."""

    inputs: tuple[torch.Tensor, ...]
    outputs: tuple[torch.Tensor, ...]


def stage_metas(split: Split, inputs: Sequence[torch.Tensor]) -> list[StageMeta]:
    """Run every stage on fake tensors, in order, and record what crosses each cut.

    Each stage's PipelineStage is built from these (torch's "static" mode), so no stage
    runs a real forward pass to learn shapes: batch-norm statistics and random state are
    left untouched, and ``requires_grad`` of every sent tensor is exactly what autograd
    will produce.

    Args:
        split: the stages.
        inputs: one micro-batch of the model's tensor inputs (real or meta tensors; taken as
            meta tensors where the stages hold meta parameters).

    Raises:
        PlanError: a stage cannot run on the values its predecessor sends.
    """
    mode = FakeTensorMode(allow_non_fake_inputs=True, shape_env=ShapeEnv(), static_shapes=True)
    fakes: dict[int, torch.Tensor] = {}  # tied weights stay tied in the fake copies

    def fake(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in fakes:
            fakes[id(t)] = mode.from_tensor(t)
        return fakes[id(t)]

    if any(t.is_meta for st in split.stages for t in st.module.parameters()):
        inputs = [x.to("meta") for x in inputs]  # a meta-built model: the batches stay real
    values: tuple[Any, ...] = tuple(mode.from_tensor(x) for x in inputs)
    out: list[StageMeta] = []
    for st in split.stages:
        state = {k: fake(v) for k, v in st.module.named_parameters(remove_duplicate=False)}
        state.update({k: fake(v) for k, v in st.module.named_buffers(remove_duplicate=False)})
        # every stage starts from leaves, as the pipeline's receive buffers are
        values = tuple(_leaf(v) for v in values)
        try:
            with mode:
                result = functional_call(_Unchecked(st.module), {f"gm.{k}": v for k, v in state.items()},
                                         values, tie_weights=False, strict=False)
        except Exception as e:
            raise PlanError(f"stage {st.index} fails on its inputs: {type(e).__name__}: {e}",
                            hint="the plan or the model is inconsistent; regenerate the plan") from e
        outs = tuple(result)
        out.append(StageMeta(inputs=tuple(_meta(v) for v in values),
                             outputs=tuple(_meta(v) for v in outs)))
        values = outs
    return out


class _Unchecked(nn.Module):
    """Runs a stage but for its runtime checks ([Note: runtime checks on meta tensors]):
    torch.export's assertions could run on symbolic values, but a ``torch._assert`` that
    symbolic_trace keeps branches on its condition, which a fake tensor cannot decide."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__()
        self.gm = gm

    def forward(self, *args: Any) -> Any:
        return _Skipping(self.gm, checks_only(self.gm)).run(*args)


class _Skipping(fx.Interpreter):
    """Runs a GraphModule node by node, but for the nodes named in ``skip`` (they give None)."""

    def __init__(self, gm: fx.GraphModule, skip: set[str]) -> None:
        super().__init__(gm)
        self.skip = skip

    def run_node(self, n: fx.Node) -> Any:
        return None if n.name in self.skip else super().run_node(n)


def _leaf(t: torch.Tensor) -> torch.Tensor:
    leaf = t.detach()
    if t.requires_grad:
        leaf.requires_grad_(True)
    return leaf


def _meta(t: Any) -> torch.Tensor:
    """An empty meta tensor with ``t``'s shape, stride, dtype and requires_grad."""
    if not isinstance(t, torch.Tensor):
        raise PlanError(f"a stage returns a {type(t).__name__}, not a tensor",
                        hint="only tensors can cross stage cuts; regenerate the plan")
    m = torch.empty_strided(tuple(t.shape), tuple(t.stride()), dtype=t.dtype, device="meta")
    return m.requires_grad_(t.requires_grad) if t.is_floating_point() or t.is_complex() else m
