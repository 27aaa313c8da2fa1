"""The gradients alive around each node's backward ([Note: gradients around a backward
call]): exact on a small graph, and a bound on what a real backward holds beyond its
saved activations."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import autopipe
from autopipe import trace
from autopipe.profile import measure
from autopipe.profile._peak import PeakBytes
from autopipe.profile.gradients import gradients_around
from autopipe.profile.profile import NodeProfile, Profile


def _node(name: str, op: str = "call_function", out: int = 0, params: tuple[str, ...] = (),
          shared: tuple[str, ...] = (), is_tensor: bool = True, linear: bool = False) -> NodeProfile:
    return NodeProfile(name=name, op=op, target="f", module="", forward_s=0.0, backward_input_s=0.0,
                       backward_weight_s=0.0, activation_bytes=0, output_bytes=out, param_bytes=0,
                       params=params, shared_params=shared, is_tensor=is_tensor, linear=linear)


def test_width_inputs_and_weights_by_hand() -> None:
    # x → a → b → c(a, b) → d → output, with n (a non-tensor) read by d; a reads w, d reads w too
    nodes = (_node("x", "placeholder", out=1000), _node("a", out=10, params=("w",)), _node("b", out=20),
             _node("n", out=5, is_tensor=False), _node("c", out=40), _node("d", out=80, shared=("w",)),
             _node("output", "output", is_tensor=False))
    edges = (("x", "a", 1000), ("a", "b", 10), ("a", "c", 10), ("b", "c", 20), ("n", "d", 5),
             ("c", "d", 40), ("d", "output", 80))
    p = Profile(device="test", dtype="float32", microbatch_shape=[[1]], nodes=nodes, edges=edges,
                method="synthetic", params={"w": 3})
    assert gradients_around(p) == {
        "x": 0,                # the model's input gets no gradient
        "a": 10 + 0 + 3,       # its output crosses; it reads x (no gradient) and w
        "b": 30 + 10,          # a and b cross (a is read again by c); it reads a
        "n": 30,               # a and b cross; n is not a tensor
        "c": 40 + 30,          # c crosses; it reads a and b
        "d": 80 + 40 + 3,      # d crosses to the output; it reads c (and n) and w
        "output": 80,          # it reads d
    }


def test_weights_added_in_place_make_no_copy() -> None:
    """Where ranks add linear layers' weight gradients in place (CPU), a linear layer's own
    weight makes no copy; a weight another node reads too still does."""
    nodes = (_node("x", "placeholder", out=8), _node("a", out=10, params=("w",), linear=True),
             _node("b", out=20, params=("v",), linear=True), _node("c", out=30, shared=("w",)),
             _node("output", "output", is_tensor=False))
    edges = (("x", "a", 8), ("a", "b", 10), ("b", "c", 20), ("c", "output", 30))
    p = Profile(device="test", dtype="float32", microbatch_shape=[[1]], nodes=nodes, edges=edges,
                method="synthetic", params={"w": 300, "v": 500})
    copied, in_place = gradients_around(p), gradients_around(p, in_place=True)
    assert (copied["a"], in_place["a"]) == (10 + 300, 10 + 300)  # w is read by c too
    assert (copied["b"], in_place["b"]) == (20 + 10 + 500, 20 + 10)
    assert copied["c"] == in_place["c"] == 30 + 20 + 300  # not a linear layer


@pytest.mark.parametrize("name, knobs", [
    ("resnet", {"width": 8, "image": 32, "batch_size": 4}),
    ("unet", {"width": 4, "depth": 2, "image": 32, "batch_size": 2}),
    ("mlp", {}),
])
def test_a_backward_holds_no_more_than_the_bound_over_its_saved_bytes(name: str, knobs: dict) -> None:
    """One forward and backward with the gradients already there (a step's second
    micro-batch), counted storage by storage: its peak beyond the saved activations lies
    within the largest bound, and above what the graph's width and inputs alone say
    (the MLP's weight gradient is the most of it)."""
    spec = autopipe.load_spec(f"examples/{name}.py:build", **knobs)
    model = spec.model
    (x,), y = spec.batch(1, 0)
    p = measure(trace(model, (x,)), (x,), warmup=0, repeats=1, progress=False)
    params = list(model.parameters())
    for q in params:
        q.grad = torch.zeros_like(q)
    with PeakBytes([x, y, *params, *(q.grad for q in params)]) as peak:
        spec.loss_fn(model(x), y).backward()
    saved = sum(n.activation_bytes for n in p.nodes)
    # profiled without its loss: the model's output and its gradient are the loss's to hold
    logits = sum(b for _, dst, b in p.edges if dst == "output")
    bound = max(gradients_around(p).values())
    extra = peak.peak - saved - 2 * logits
    assert 0 < extra <= bound
    if name == "mlp":
        no_weights = max(gradients_around(replace(p, params=dict.fromkeys(p.params, 0))).values())
        assert extra > no_weights
