"""Tests for autopipe/profile/_reuse.py: reused costs of repeated nodes equal per-node estimates."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.fx as fx

import autopipe
from autopipe.profile import estimate as estimate_fn
from autopipe.profile._node import prepare
from autopipe.profile._reuse import call_key
from autopipe.spec import example_target

from .conftest import example_spec

estimate_module = __import__("autopipe.profile.estimate", fromlist=["_Estimator"])


def _estimate(spec: autopipe.ModelSpec, graph: autopipe.Graph) -> autopipe.Profile:
    return estimate_fn(graph, spec.example_inputs, spec.example_kwargs, device_spec="h100",
                       progress=False, loss_fn=spec.loss_fn, target=example_target(spec))


@pytest.mark.parametrize("name", ["llama", "gpt2", "bert", "resnet"])
def test_reused_costs_equal_per_node_estimates(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    spec = example_spec(name)
    graph = autopipe.trace(spec.model, spec.example_inputs, spec.example_kwargs)
    priced: list[str] = []
    backward = estimate_module._Estimator._backward

    def counted(self: Any, call: Any, out: Any, fwd: Any) -> Any:
        priced.append(call.node.name)
        return backward(self, call, out, fwd)

    monkeypatch.setattr(estimate_module._Estimator, "_backward", counted)
    reused = _estimate(spec, graph)
    with_reuse = len(priced)
    priced.clear()
    monkeypatch.setattr(estimate_module, "call_key", lambda node, call: None)
    alone = _estimate(spec, graph)
    computing = sum(1 for n in graph.gm.graph.nodes if n.op.startswith("call_"))
    assert len(priced) == computing
    if name in ("llama", "gpt2", "bert"):  # repeated layers: most backward prices are reused
        assert with_reuse < computing / 2
    assert reused.to_json() == alone.to_json()


@pytest.mark.parametrize(("name", "device_spec", "dtype", "tf32"), [
    ("llama", "h200", "bf16", False), ("gpt2", "h100", None, True), ("resnet", "a100", None, False)])
def test_reuse_gives_the_queue_a_fresh_estimate_would(monkeypatch: pytest.MonkeyPatch, name: str,
                                                      device_spec: str, dtype: str | None, tf32: bool) -> None:
    """Each node's forward and backward halves, float-equal, through the launch queue
    (host time per call, views, kernel efficiencies, TF32): the reused calls are the fresh ones."""
    spec = example_spec(name)
    graph = autopipe.trace(spec.model, spec.example_inputs, spec.example_kwargs)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", tf32)

    def run() -> autopipe.Profile:
        before = torch.backends.cuda.matmul.allow_tf32  # a property of torch's, not an attribute
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            return estimate_fn(graph, spec.example_inputs, spec.example_kwargs, device_spec=device_spec,
                               dtype=dtype, progress=False, loss_fn=spec.loss_fn, target=example_target(spec))
        finally:
            torch.backends.cuda.matmul.allow_tf32 = before

    reused = run()
    monkeypatch.setattr(estimate_module, "call_key", lambda node, call: None)
    alone = run()
    assert reused.meta["aten_calls"]["forward"] > 0 and reused.meta["kernels"]["forward"] > 0
    assert reused.meta == alone.meta
    assert reused.loss == alone.loss
    for a, b in zip(reused.nodes, alone.nodes, strict=True):
        assert a.name == b.name
        assert (a.forward_s, a.backward_input_s, a.backward_weight_s, a.activation_bytes) == \
            (b.forward_s, b.backward_input_s, b.backward_weight_s, b.activation_bytes), a.name


def _key(fn: Any, args: list[Any], params: set[int] | None = None) -> Any:
    n = fx.Graph().call_function(fn, tuple(args))
    call = prepare(n, tuple(args), {}, op=lambda a, k: fn(*a, **k), param_ids=params or set(),
                   module=None)
    return call_key(n, call)


def test_keys_tell_apart_what_prices_differently() -> None:
    a, b = torch.empty(4, 8, device="meta", requires_grad=True), torch.empty(8, 3, device="meta")
    same = _key(torch.matmul, [a, b.clone()])
    assert same == _key(torch.matmul, [a.clone(), b])
    assert same != _key(torch.matmul, [a, torch.empty(8, 5, device="meta")])      # a shape
    assert same != _key(torch.matmul, [a, b.requires_grad_()])                      # a gradient
    assert same != _key(torch.matmul, [a, b], params={id(b)})                       # a parameter
    assert same != _key(torch.matmul, [a, b.to(torch.float16)])                     # a dtype
    assert same != _key(torch.add, [a, a.clone()])
    assert _key(torch.add, [a, a]) != _key(torch.add, [a, a.clone()])              # one tensor twice
    t = torch.empty(8, 4, device="meta").t()
    assert _key(torch.relu, [t]) != _key(torch.relu, [t.contiguous()])            # strides


def test_no_key_where_shapes_do_not_say_everything() -> None:
    x = torch.empty(4, 8, device="meta")
    lin = torch.nn.Linear(8, 8, device="meta")
    g = fx.Graph()
    n = g.call_module("lin", (g.placeholder("x"),))
    call = prepare(n, (x,), {}, op=lambda a, k: lin(*a), param_ids=set(), module=lin)
    assert call_key(n, call) is None                                  # a module's settings
    n = fx.Graph().call_function(torch.Tensor.add_, (x, x))
    call = prepare(n, (x, x), {}, op=lambda a, k: a[0].add_(a[1]), param_ids=set(), module=None)
    assert call.written and call_key(n, call) is None                 # writes its input
    assert _key(_scaled, [x, object()]) is None                       # an argument of unknown kind
    assert _key(_scaled, [x, 2]) is not None


def _scaled(x: torch.Tensor, by: object) -> torch.Tensor:
    return x * 2
