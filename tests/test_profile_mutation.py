"""Tests for autopipe/profile/_mutation.py and the walker's copies: profiling models that write in place."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.fx as fx
import torch.utils._pytree as pytree

import autopipe
from autopipe.profile import estimate, measure
from autopipe.profile._mutation import written_inputs
from autopipe.profile._node import NodeCall
from autopipe.profile._walk import NodeWalker
from tests.models import InPlace, T5Pair, in_place_inputs


def _snapshot(value: Any) -> Any:
    return pytree.tree_map_only(torch.Tensor, lambda t: t.detach().clone(), value)


class _Reference(fx.Interpreter):
    """An ordinary forward of the graph that keeps a copy of every node's output as it was made."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.seen: dict[str, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        self.seen[n.name] = _snapshot(out)
        return out


@pytest.fixture
def passed_on(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Every node's output as the profilers pass it on, copied when it is passed on."""
    seen: dict[str, Any] = {}
    run_node = NodeWalker.run_node

    def spy(self: NodeWalker, n: fx.Node) -> Any:
        out = run_node(self, n)
        seen[n.name] = _snapshot(out)
        return out

    monkeypatch.setattr(NodeWalker, "run_node", spy)
    yield seen


def _expected(graph: autopipe.Graph, inputs: tuple[torch.Tensor, ...]) -> dict[str, Any]:
    ref = _Reference(graph.gm)
    with torch.no_grad():
        ref.run(*graph.flat_inputs(_snapshot(inputs), None))
    return ref.seen


def _assert_same(seen: dict[str, Any], expected: dict[str, Any]) -> None:
    assert seen.keys() == expected.keys()
    for name, value in expected.items():
        got = pytree.tree_leaves(seen[name])
        want = pytree.tree_leaves(value)
        assert len(got) == len(want), name
        for g, w in zip(got, want):
            if isinstance(w, torch.Tensor):
                torch.testing.assert_close(g, w, msg=f"node {name}")


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_measure_passes_on_a_single_forwards_values(frontend: str, passed_on: dict[str, Any],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    model, inputs = InPlace(), in_place_inputs()
    graph = autopipe.trace(model, inputs, frontend=frontend)
    given = _snapshot(inputs)
    differentiated: set[str] = set()  # nodes whose backward the profiler had to time
    backward = NodeCall.backward

    def spy(self: NodeCall, out: Any, which: str) -> Any:
        fn = backward(self, out, which)
        if fn is not None:
            differentiated.add(self.node.name)
        return fn

    monkeypatch.setattr(NodeCall, "backward", spy)
    p = measure(graph, inputs, warmup=2, repeats=3, progress=False)
    _assert_same(passed_on, _expected(graph, inputs))
    with torch.no_grad():
        torch.testing.assert_close(passed_on["output"][0], model(*_snapshot(inputs)))
    for before, after in zip(given, inputs):
        assert torch.equal(before, after)  # the user's example is not written
    assert all(n.forward_s >= 0 for n in p.nodes)
    written = "mul_" if frontend == "fx" else "relu_"
    # a written leaf still has its gradient: its backward exists and was timed (the time
    # itself only >= 0: a microsecond kernel reads 0 after the autograd call's overhead
    # on a loaded machine, and fx's scalar mul_ saves nothing)
    node = p.by_name[written]
    assert written in differentiated and node.backward_input_s >= 0


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_estimate_passes_on_the_right_shapes(frontend: str, passed_on: dict[str, Any]) -> None:
    model, inputs = InPlace(), in_place_inputs()
    graph = autopipe.trace(model, inputs, frontend=frontend)
    p = estimate(graph, inputs, progress=False)
    expected = _expected(graph, inputs)
    for name, value in expected.items():
        if isinstance(value, torch.Tensor):
            assert passed_on[name].shape == value.shape, name
    assert p.by_name["masked_fill_"].forward_s > 0


def test_whole_model_runs_on_copies_of_inputs_it_writes() -> None:
    class WritesInput(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = torch.nn.Embedding(4, 2)

        def forward(self, pos: torch.Tensor) -> torch.Tensor:
            pos.add_(1)  # 0 -> 1 in one forward; out of range after four
            return self.table(pos)

    model, pos = WritesInput(), torch.zeros(3, dtype=torch.long)
    graph = autopipe.trace(model, (pos.clone(),))
    measure(graph, (pos,), warmup=3, repeats=3, progress=False)
    assert torch.equal(pos, torch.zeros(3, dtype=torch.long))


def _node(graph: autopipe.Graph, name: str) -> fx.Node:
    return next(n for n in graph.gm.graph.nodes if n.name == name)


def test_schema_names_the_written_argument() -> None:
    graph = autopipe.trace(InPlace(), in_place_inputs(), frontend="export")
    a, b = torch.ones(2), torch.ones(2)
    node = _node(graph, "add_")
    assert node.target is torch.ops.aten.add_.Tensor

    def fails(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        raise AssertionError("the schema needs no probe run")

    assert written_inputs(node, (a, b), {}, op=fails, candidates=[a, b]) == {id(a)}
    assert written_inputs(_node(graph, "add"), (a, b), {}, op=fails, candidates=[a, b]) == set()


def test_probe_by_version_counter() -> None:
    graph = autopipe.trace(InPlace(), in_place_inputs(), frontend="fx")
    h, x = torch.randn(4, 8), torch.randn(4, 8)
    node = _node(graph, "add_")  # call_method add_: no schema
    assert written_inputs(node, (h, x), {}, op=lambda a, k: a[0].add_(a[1]),
                          candidates=[h, x]) == {id(h)}
    assert torch.equal(h, h.clone())  # the probe ran on copies
    act = _node(graph, "act")  # call_module ReLU(inplace=True)
    assert written_inputs(act, (h,), {}, op=lambda a, k: torch.relu_(a[0][:, :2]),
                          candidates=[h]) == {id(h)}  # a write through a view
    clone = _node(graph, "clone")  # out-of-place method: no probe
    assert written_inputs(clone, (h,), {}, op=lambda a, k: a[0].add_(1), candidates=[h]) == set()


def test_t5_profiles(passed_on: dict[str, Any]) -> None:
    torch.manual_seed(0)
    model = T5Pair()
    g = torch.Generator().manual_seed(0)
    inputs = (torch.randint(0, 64, (2, 12), generator=g), torch.randint(0, 64, (2, 12), generator=g))
    graph = autopipe.trace(model, inputs)
    p = measure(graph, inputs, warmup=1, repeats=2, progress=False)
    assert p.forward_s > 0 and p.backward_s > 0
    _assert_same(passed_on, _expected(graph, inputs))
    assert estimate(graph, inputs, progress=False).forward_s > 0


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_measure_lands_a_write_of_shape(frontend: str, passed_on: dict[str, Any]) -> None:
    """BigBird's ``context.unsqueeze_(2)`` on an activation that needs a gradient: the
    profiler runs it on a clone of its leaf and the input takes the clone's new shape
    (copying the clone back into the input raised: its shape is not the input's)."""

    class Unsqueezes(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp = torch.nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.inp(x)
            h.unsqueeze_(1)  # h is (4, 1, 8) now, read below by its old name
            return torch.cat([h, h * 2], dim=1).sum(1)

    model, x = Unsqueezes(), torch.randn(4, 8)
    graph = autopipe.trace(model, (x,), frontend=frontend)
    p = measure(graph, (x,), warmup=1, repeats=2, progress=False)
    assert p.forward_s > 0
    _assert_same(passed_on, _expected(graph, (x,)))
