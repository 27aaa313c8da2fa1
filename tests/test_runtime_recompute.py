"""Tests for autopipe/runtime/recompute.py: planned groups run under checkpointing, the
stages still compute the model, and they keep fewer activations alive."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import autopipe
from autopipe.errors import PlanError
from autopipe.plan_format import Plan
from autopipe.runtime.recompute import Recompute, recompute_once_per_weight_pass
from autopipe.runtime.split import split_graph

from .runtime_cases import CASES, Case, pipeline_backward
from .runtime_plans import plan_from_cuts

RECOMPUTED = [c for _, c in sorted(CASES.items()) if c.recompute != "none"] + [
    # torch.export graphs: batch norm's statistics enter aten.batch_norm as arguments,
    # which it updates in place although its schema does not say so
    Case("resnet", 2, zoo=True, recompute="full"),
    Case("mobilevit", 2, zoo=True, recompute="full"),
    # a state written slice by slice after the blocks that read it ([Note: recomputed regions])
    Case("rwkv", 2, zoo=True, recompute="full"),
]


def _without_recompute(plan: Plan) -> Plan:
    return dataclasses.replace(plan, stages=tuple(dataclasses.replace(s, recompute=(), recompute_s=0.0)
                                                  for s in plan.stages))


@pytest.mark.parametrize("case", RECOMPUTED, ids=lambda c: c.name)
def test_recomputed_stages_compute_the_model(case: Case) -> None:
    """With the planned groups checkpointed, the stages run one after another give the
    model's loss, every gradient and every buffer (batch-norm statistics updated once)."""
    spec, graph, plan = case.build()
    assert plan.recomputes
    split = split_graph(graph, plan)
    # one checkpointed call per group whose results something outside it reads (a group
    # of dead code, such as an unused mask, is left as it is)
    nodes = {n.name: n for n in graph.gm.graph.nodes}
    live = sum(1 for s in plan.stages for g in s.recompute
               if any(u.name not in g for n in g for u in nodes[n].users))
    assert live > 0
    assert sum(isinstance(m, Recompute) for st in split.stages for m in st.module.modules()) == live
    inputs, target = spec.batch(1, 0)
    flat = [v for v in graph.flat_inputs(tuple(inputs), spec.example_kwargs) if isinstance(v, torch.Tensor)]
    gm = graph.gm
    buffers = {k: v.clone() for k, v in gm.named_buffers()}
    torch.manual_seed(0)
    loss_ref = spec.loss_fn(graph.unflatten_output(gm(*flat)), target)
    grads_ref = torch.autograd.grad(loss_ref, list(gm.parameters()), allow_unused=True)
    buffers_ref = {k: v.clone() for k, v in gm.named_buffers()}
    with torch.no_grad():
        for k, v in gm.named_buffers():
            v.copy_(buffers[k])
    torch.manual_seed(0)
    loss = pipeline_backward(split, flat, lambda outs: spec.loss_fn(graph.unflatten_output(outs), target))
    torch.testing.assert_close(loss, loss_ref)
    for (pname, p), r in zip(gm.named_parameters(), grads_ref):
        if r is not None:
            torch.testing.assert_close(p.grad, r, msg=pname)
    for k, v in gm.named_buffers():
        torch.testing.assert_close(v, buffers_ref[k], msg=k)


def test_groups_keep_the_stage_parameters_and_state() -> None:
    """A checkpointed group holds no parameters of its own: the stage's parameter names and
    state_dict are those of the same stage without recomputation."""
    _spec, graph, plan = CASES["llama-4-1f1b-recompute-full-blocks32"].build()
    with_groups = split_graph(graph, plan)
    without = split_graph(graph, _without_recompute(plan))
    for a, b in zip(with_groups.stages, without.stages):
        assert [k for k, _ in a.module.named_parameters(remove_duplicate=False)] == \
            [k for k, _ in b.module.named_parameters(remove_duplicate=False)]
        assert list(a.module.state_dict()) == list(b.module.state_dict())


class _Alive(TorchDispatchMode):
    """Every storage an operator makes; ``alive()``: the bytes of those not yet freed."""

    def __init__(self) -> None:
        super().__init__()
        self.made: dict[int, tuple[StorageWeakRef, int]] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().nbytes():
                storage = t.untyped_storage()
                self.made.setdefault(storage._cdata, (StorageWeakRef(storage), storage.nbytes()))
        return out

    def alive(self) -> int:
        return sum(n for ref, n in self.made.values() if not ref.expired())


def _kept_by_forward(split: autopipe.runtime.split.Split, flat: list[torch.Tensor]) -> list[int]:
    """Per stage, the bytes its forward leaves alive for its backward (outputs included)."""
    values: tuple[torch.Tensor, ...] = tuple(flat)
    kept = []
    held = []
    for st in split.stages:
        values = tuple(v.detach().requires_grad_(v.is_floating_point()) for v in values)
        with _Alive() as alive:
            values = st.module(*values)
        held.append(values)  # the outputs, whose graph holds what backward needs
        kept.append(alive.alive())
    return kept


def test_recomputed_stages_keep_less_alive() -> None:
    """Measured on this CPU: a stage's forward keeps fewer bytes alive for its backward
    with its groups checkpointed, about what the plan predicts it frees per micro-batch."""
    spec, graph, plan = CASES["llama-4-1f1b-recompute-full-blocks32"].build()
    flat = [v for v in graph.flat_inputs(spec.example_inputs) if isinstance(v, torch.Tensor)]
    with_groups = _kept_by_forward(split_graph(graph, plan), flat)
    without = _kept_by_forward(split_graph(graph, _without_recompute(plan)), flat)
    for s, stage in enumerate(plan.stages):
        if stage.recompute:
            assert with_groups[s] < without[s], (s, with_groups, without)


class _WritesInput(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2 = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.l1(x)
        b = torch.tanh(a)
        a.add_(1.0)
        return self.l2(a * b)


def test_a_group_that_writes_its_input_is_refused() -> None:
    """Running it twice would write twice: the split names the node and the fix."""
    graph = autopipe.trace(_WritesInput(), (torch.randn(2, 4),), frontend="fx")
    plan = plan_from_cuts(graph, [len(graph.nodes) - 3])
    stage = plan.stages[0]
    writer = next(n for n in stage.nodes if n.startswith("add_"))
    bad = dataclasses.replace(plan, stages=(dataclasses.replace(stage, recompute=((writer,),)),
                                            *plan.stages[1:]))
    with pytest.raises(PlanError, match="in place.*--recompute none|--recompute none"):
        split_graph(graph, bad)
    # a group that makes the value it writes is fine
    maker = next(n for n in stage.nodes if n.startswith("l1"))
    tanh = next(n for n in stage.nodes if n.startswith("tanh"))
    good = dataclasses.replace(plan, stages=(dataclasses.replace(stage, recompute=((maker, tanh, writer),)),
                                             *plan.stages[1:]))
    split_graph(graph, good)


class _StateWrittenAfter(torch.nn.Module):
    """A state written slice by slice, as RWKV's and RecurrentGemma's are: a block reads one
    slice and makes a view of the next, which the model writes after the block (whole, its
    backward saves no view of the state)."""

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2 = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = x.new_zeros(2, 3, 4)
        state[:, 0] = x
        h = torch.tanh(self.l1(state[:, 0] + 1.0))
        slot = state[:, 1]
        slot.copy_(h * 2.0)
        return self.l2(state.sum(1))


def test_a_group_whose_input_is_written_after_it_recomputes_what_it_read() -> None:
    """[Note: recomputed regions]: the group reads the state and makes a view of it that the
    stage writes after it. It recomputes from a copy of the state as it read it (autograd
    refused the backward before: the state's version had moved), and the view it hands out
    still views the state, so the write lands there: loss and gradients as without
    recomputation. (Checkpointing saves the group's inputs: without the copy, autograd
    refuses the backward, as the state's version has moved.)"""
    torch.manual_seed(0)
    model = _StateWrittenAfter()
    graph = autopipe.trace(model, (torch.randn(2, 4),), frontend="export")
    plan = plan_from_cuts(graph, [len(graph.nodes) - 3])
    stage = plan.stages[0]
    group = ("select_1", "add", "linear", "tanh", "select_2")  # state[:, 0] + 1, l1, tanh, state[:, 1]
    assert set(group) <= set(stage.nodes) and "copy__1" in stage.nodes
    recomputed = dataclasses.replace(plan, stages=(dataclasses.replace(stage, recompute=(group,)),
                                                   *plan.stages[1:]))
    split = split_graph(graph, recomputed)
    calls = [m for st in split.stages for m in st.module.modules() if isinstance(m, Recompute)]
    assert len(calls) == 1 and calls[0].copied_args == (0,)
    # the view written outside is made outside the group
    assert [n.name for n in calls[0].body.graph.nodes if n.op == "call_function"] == ["select_1", "add", "linear", "tanh"]
    x = torch.randn(2, 4)
    loss_ref = model(x).pow(2).sum()
    grads_ref = torch.autograd.grad(loss_ref, list(model.parameters()))
    loss = pipeline_backward(split, [x], lambda outs: outs[0].pow(2).sum())
    torch.testing.assert_close(loss, loss_ref)
    for (name, p), ref in zip(graph.gm.named_parameters(), grads_ref):
        torch.testing.assert_close(p.grad, ref, msg=name)



class _WeightPass:
    """A stand-in for a PipelineStage's split backward: torch's own input and weight passes
    (``stage_backward_input``, then ``stage_backward_weight``: one backward call per
    parameter group) over three layers with parameters run as one checkpointed group."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.layers = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 8))
        self.group = Recompute(torch.fx.symbolic_trace(self.layers))
        self.runs = 0
        self.layers[0].register_forward_pre_hook(self._count)
        self.param_groups: list[dict[str, Any]] = []

    def _count(self, *_: Any) -> None:
        self.runs += 1

    def backward_input(self, x: torch.Tensor) -> None:
        from torch.distributed.pipelining._backward import stage_backward_input  # torch's I pass

        loss = self.group(x).pow(2).sum()
        _, self.param_groups = stage_backward_input([loss], None, [x], self.layers.parameters())

    def backward_weight_one_chunk(self) -> None:
        from torch.distributed.pipelining._backward import stage_backward_weight  # torch's W pass

        stage_backward_weight(self.layers.parameters(), self.param_groups)


def test_a_weight_pass_recomputes_once() -> None:
    """[Note: recomputation in a split backward]: torch's weight pass recomputes a group once
    per parameter group (3 here); under ``recompute_once_per_weight_pass`` once in all, with
    the same gradients."""
    x = torch.randn(4, 8)
    grads = []
    for once in (False, True):
        stage = _WeightPass()
        if once:
            recompute_once_per_weight_pass(stage)
        stage.backward_input(x.clone().requires_grad_())
        assert stage.runs == 2  # the forward, and once in the input pass
        stage.backward_weight_one_chunk()
        assert stage.runs == (3 if once else 5)
        grads.append([p.grad for p in stage.layers.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
