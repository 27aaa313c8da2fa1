"""Tests for autopipe/runtime/split.py: per-stage modules compute the model, skips pass through."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import autopipe
from autopipe.errors import PlanError, PlanMismatchError
from autopipe.runtime.split import split_graph

from .runtime_cases import TINY, Case, pipeline_backward
from .runtime_plans import hand_plan, plan_from_cuts


def _chain(split: autopipe.runtime.split.Split, flat: list[torch.Tensor]) -> list[torch.Tensor]:
    values = tuple(flat)
    for st in split.stages:
        values = st.module(*values)
    return split.rebuild_outputs(values)


@pytest.mark.parametrize("hand", [False, True], ids=["planner", "hand"])
@pytest.mark.parametrize("stages", [2, 4])
@pytest.mark.parametrize("name", sorted(TINY))
def test_stages_compute_the_model(name: str, stages: int, hand: bool) -> None:
    """Running the stages one after another gives the model's loss and every gradient."""
    spec, graph, plan = Case(name, stages).build(hand=hand)
    split = split_graph(graph, plan)
    assert len(split.stages) == stages
    _assert_computes_the_model(spec, graph, split)


@pytest.mark.parametrize("stages", [2, 4])
def test_stages_that_make_values_again_compute_the_model(stages: int) -> None:
    """Llama's stages make its mask and rotary tables again ([Note: values made again]):
    nothing of them crosses a cut, and the stages still give the loss and every gradient."""
    spec, graph, plan = Case("llama", stages, remake="all").build()
    remade = {v for s in plan.stages for v in s.remade}
    split = split_graph(graph, plan)
    sent = {v for st in split.stages[1:] for v in st.inputs}
    assert remade and not sent & remade, sent & remade
    masks = {str(n.args[3]) for n in graph.gm.graph.nodes
             if n.target is torch.ops.aten.scaled_dot_product_attention.default}
    assert masks <= remade | set(plan.stages[0].nodes), masks
    for st, stage in zip(split.stages, plan.stages):
        ran = {n.name for n in st.module.graph.nodes}
        assert set(stage.remade) <= ran
    assert all(st.inputs and not set(st.inputs) & remade for st in split.stages[1:])
    _assert_computes_the_model(spec, graph, split)


def test_a_plan_that_makes_again_what_it_may_not_is_refused() -> None:
    _spec, graph, plan = Case("llama", 2, remake="all").build()
    first, second = plan.stages
    made_here = next(n for n in first.nodes if graph.by_name[n].op == "call_function"
                     and not graph.by_name[n].remakable)
    reader = next(v for v in second.remade if graph.by_name[v].inputs)
    cases = {
        "depends on an input": (*second.remade, made_here),
        "but not": tuple(v for v in second.remade if v != graph.by_name[reader].inputs[0]),
        "does not have": (*second.remade, "nope"),
    }
    for message, remade in cases.items():
        bad = dataclasses.replace(plan, stages=(first, dataclasses.replace(second, remade=remade)))
        with pytest.raises(PlanError, match=message):
            split_graph(graph, bad)
    later = dataclasses.replace(plan, stages=(dataclasses.replace(first, remade=second.remade[:1]), second))
    with pytest.raises(PlanError, match="earlier stages"):
        split_graph(graph, later)


def _assert_computes_the_model(spec: autopipe.ModelSpec, graph: autopipe.Graph,
                               split: autopipe.runtime.split.Split) -> None:
    """The stages, run one after another, give the model's loss and every gradient."""
    (inputs,), target = spec.batch(1, 0)[0], spec.batch(1, 0)[1]
    flat = graph.flat_inputs((inputs,))
    gm = graph.gm

    loss_ref = spec.loss_fn(graph.unflatten_output(gm(*flat)), target)
    grads_ref = torch.autograd.grad(loss_ref, list(gm.parameters()), allow_unused=True)
    loss = spec.loss_fn(graph.unflatten_output(_chain(split, flat)), target)
    grads = torch.autograd.grad(loss, list(gm.parameters()), allow_unused=True)
    torch.testing.assert_close(loss, loss_ref)
    for (pname, _), g, r in zip(gm.named_parameters(), grads, grads_ref):
        if r is None:
            assert g is None, pname
        else:
            torch.testing.assert_close(g, r, msg=pname)


def test_unet_skips_pass_through_several_stages() -> None:
    _spec, graph, plan = Case("unet", 4).build()
    split = split_graph(graph, plan)
    crossings: dict[str, int] = {}
    for st in split.stages[1:]:
        for v in st.inputs:
            crossings[v] = crossings.get(v, 0) + 1
    assert max(crossings.values()) >= 3, crossings  # a skip crosses three cuts
    assert any(st.passthrough for st in split.stages)
    for st in split.stages:
        assert set(st.passthrough) <= set(st.inputs) & set(st.outputs)


def test_tied_weight_in_first_and_last_stage() -> None:
    _spec, graph, plan = Case("gpt2", 2).build()
    split = split_graph(graph, plan)
    first = {id(p) for p in split.stages[0].module.parameters()}
    last = {id(p) for p in split.stages[-1].module.parameters()}
    wte = graph.gm.get_parameter("transformer.wte.weight")
    assert id(wte) in first and id(wte) in last


def test_plan_for_other_nodes_is_a_mismatch() -> None:
    _spec, graph, plan = Case("mlp", 2).build(hand=True)
    renamed = dataclasses.replace(plan, stages=(
        dataclasses.replace(plan.stages[0], nodes=("nope", *plan.stages[0].nodes[1:])),
        *plan.stages[1:]))
    with pytest.raises(PlanMismatchError, match="'nope'"):
        split_graph(graph, renamed)


def test_backwards_edge_is_refused() -> None:
    """A stage that reads a value made in a later stage is not a pipeline."""
    _spec, graph, plan = Case("mlp", 2).build(hand=True)
    a, b = plan.stages
    # move the next-to-last node of stage 0 into stage 1; its user stays in stage 0
    assert a.nodes[-2] in graph.by_name[a.nodes[-1]].inputs
    swapped = dataclasses.replace(plan, stages=(
        dataclasses.replace(a, nodes=(*a.nodes[:-2], a.nodes[-1])),
        dataclasses.replace(b, nodes=(a.nodes[-2], *b.nodes))))
    with pytest.raises(PlanError, match="later stage"):
        split_graph(graph, swapped)


def test_non_tensor_crossing_a_cut_is_refused() -> None:
    spec = Case("gpt2", 2).spec()
    graph = autopipe.trace(spec.model, spec.example_inputs)
    split_node = next(i for i, n in enumerate(graph.nodes) if n.target == "aten.split.Tensor")
    plan = plan_from_cuts(graph, [split_node])
    with pytest.raises(PlanError, match="not a single tensor"):
        split_graph(graph, plan)


def test_output_must_be_in_last_stage() -> None:
    _spec, graph, plan = Case("mlp", 2).build(hand=True)
    a, b = plan.stages
    bad = dataclasses.replace(plan, stages=(
        dataclasses.replace(a, nodes=(*a.nodes, b.nodes[-1])),
        dataclasses.replace(b, nodes=b.nodes[:-1])))
    with pytest.raises(PlanError, match="output"):
        split_graph(graph, bad)


def test_devices_are_retargeted() -> None:
    from autopipe.runtime.split import retarget_devices

    spec = Case("gpt2", 2).spec()
    graph = autopipe.trace(spec.model, spec.example_inputs)
    split = split_graph(graph, hand_plan(graph, 2))
    gm = split.stages[0].module
    meta = torch.device("meta")
    retarget_devices(gm, meta)
    found = [v for n in gm.graph.nodes for v in (*n.args, *n.kwargs.values()) if isinstance(v, torch.device)]
    assert found and all(d == meta for d in found)


class _WritesReceived(torch.nn.Module):
    """``a`` is written in place by ``add_`` and read again by its old name, as Falcon adds
    its attention output into the MLP's."""

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2, self.l3 = (torch.nn.Linear(4, 4) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.l1(x)
        b = self.l2(x)
        a.add_(b)
        return self.l3(a) * torch.tanh(b)


@pytest.mark.parametrize("frontend", ["fx", "export"])
@pytest.mark.parametrize("cuts", [("linear_1",), ("linear_1", "add_")], ids=["2", "3"])
def test_received_values_written_in_place(frontend: str, cuts: tuple[str, ...]) -> None:
    """A stage that writes a received value in place gets a copy (autograd forbids writing
    the receive buffer, or the view that makes its gradient contiguous), and passes the
    written copy on to a later reader (see [Note: received values written in place])."""
    torch.manual_seed(0)
    model = _WritesReceived()
    x = torch.randn(3, 4)
    graph = autopipe.trace(model, (x,), frontend=frontend)
    names = {"linear_1": ("l2", "linear_1"), "add_": ("add_",)}
    index = {n.name: i for i, n in enumerate(graph.nodes)}
    at = [max(index[a] for a in names[c] if a in index) for c in cuts]
    split = split_graph(graph, plan_from_cuts(graph, at))
    assert len(split.stages) == len(cuts) + 1
    gm = graph.gm
    expected = gm(x.clone())
    grads_ref = torch.autograd.grad(expected[0].square().sum(), list(gm.parameters()))
    loss = pipeline_backward(split, [x.clone()], lambda outs: outs[0].square().sum())
    torch.testing.assert_close(loss, expected[0].square().sum())
    for (pname, p), r in zip(gm.named_parameters(), grads_ref):
        torch.testing.assert_close(p.grad, r, msg=pname)


class _Unread(torch.nn.Module):
    """XLNet's pattern: parameters the forward does not read (its segment embeddings)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
        self.segment = torch.nn.Parameter(torch.zeros(3))
        self.never = torch.nn.Linear(4, 2)
        self.register_buffer("counted", torch.ones(2))  # persistent: in the state_dict
        self.register_buffer("scratch", torch.ones(2), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_unread_parameters_are_held_by_the_last_stage(frontend: str) -> None:
    """Every parameter and persistent buffer of the model is in some stage, read or not
    ([Note: unread parameters]): a checkpoint of the stages has every key of the model's
    state_dict."""
    model = _Unread()
    graph = autopipe.trace(model, (torch.randn(2, 4),), frontend=frontend)
    unread = {"segment", "never.weight", "never.bias"}
    assert unread <= set(graph.nodes[-1].params)
    split = split_graph(graph, plan_from_cuts(graph, [len(graph.nodes) // 2]))
    held = [{k for k, _ in s.module.named_parameters()} for s in split.stages]
    assert unread <= held[-1] and not unread & held[0]
    assert set().union(*held) == set(dict(model.named_parameters()))
    assert split.stages[-1].module.segment is model.segment  # shared, as every stage's parameters
    buffers = [{k for k, _ in s.module.named_buffers()} for s in split.stages]
    assert buffers == [set(), {"counted"}]
    assert set().union(*held, *buffers) == set(model.state_dict())
