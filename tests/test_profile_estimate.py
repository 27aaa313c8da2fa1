"""Tests for autopipe/profile/estimate.py: FLOPs, bytes and saved bytes on meta tensors."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import autopipe
from autopipe import ModelSpec
from autopipe.errors import DeviceSpecError
from autopipe.profile import DeviceSpec, estimate, load_device_spec, measure
from tests.conftest import EXAMPLES, example_spec

Traced = dict[str, tuple[ModelSpec, autopipe.Graph]]


def _whole_flops(spec: ModelSpec) -> int:
    """FLOPs of one forward+backward of the eager model, counted by PyTorch's FlopCounterMode."""
    with FlopCounterMode(display=False) as counter:
        out = spec.model(*spec.example_inputs, **spec.example_kwargs)
        logits = out if isinstance(out, torch.Tensor) else out["logits"]
        logits.backward(torch.ones_like(logits))
    spec.model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


@pytest.mark.parametrize("name", ["mlp", "resnet", "unet"])
def test_flops_match_flop_counter(traced: Traced, name: str) -> None:
    spec, graph = traced[name]
    p = estimate(graph, spec.example_inputs, spec.example_kwargs)
    assert sum(p.meta["flops"].values()) == _whole_flops(spec)


@pytest.mark.parametrize("name", EXAMPLES)
def test_saved_bytes_match_measurement(traced: Traced, name: str) -> None:
    spec, graph = traced[name]
    est = estimate(graph, spec.example_inputs, spec.example_kwargs)
    real = measure(graph, spec.example_inputs, spec.example_kwargs, warmup=0, repeats=1)
    assert est.activation_bytes == pytest.approx(real.activation_bytes, rel=0.01)
    assert [n.output_bytes for n in est.nodes] == [n.output_bytes for n in real.nodes]
    assert est.params == real.params and est.edges == real.edges


def test_backward_halves(traced: Traced) -> None:
    spec, graph = traced["mlp"]
    p = estimate(graph, spec.example_inputs)
    lin, gelu, first = p.by_name["blocks_1_0"], p.by_name["blocks_1_1"], p.by_name["inp"]
    assert lin.backward_input_s > 0 and lin.backward_weight_s > 0
    assert gelu.backward_weight_s == 0 and gelu.backward_input_s > 0
    assert first.backward_input_s == 0 and first.backward_weight_s > 0
    # 2·B·in·out FLOPs for each of forward, input gradient and weight gradient
    flops = 2 * 8 * 256 * 256
    assert p.meta["flops"]["forward"] >= 8 * flops


def test_roofline_of_one_linear() -> None:
    spec = DeviceSpec(name="toy", peak_flops={"float32": 1e12}, memory_bandwidth=1e11,
                      memory=2**30, link_bandwidth=1e10)
    model = torch.nn.Linear(512, 512, bias=False)
    x = torch.randn(256, 512)
    graph = autopipe.trace(model, (x,))
    p = estimate(graph, (x,), device_spec=spec)
    node = next(n for n in p.nodes if n.params)
    flops = 2 * 256 * 512 * 512
    moved = 4 * (256 * 512 + 512 * 512 + 256 * 512)  # read x and W, write y
    assert node.forward_s == pytest.approx(max(flops / 1e12, moved / 1e11))
    # x needs no gradient: only the weight gradient is priced
    assert node.backward_input_s == 0 and node.backward_weight_s > 0


def test_meta_model_and_dtype() -> None:
    spec = example_spec("llama", device="meta")
    graph = autopipe.trace(spec.model, spec.example_inputs)
    fp32 = estimate(graph, spec.example_inputs)
    bf16 = estimate(graph, spec.example_inputs, dtype="bf16")
    assert bf16.dtype == "bfloat16" and fp32.dtype == "float32"
    assert sum(bf16.params.values()) * 2 == sum(fp32.params.values())
    assert bf16.forward_s < fp32.forward_s  # tensor-core rate and half the bytes
    assert fp32.device == "estimate:h100" and fp32.method == "estimate"
    assert fp32.meta["device_spec"]["name"] == "h100"


def test_six_n_t_on_a_small_llama() -> None:
    spec = example_spec("llama", device="meta", num_hidden_layers=2, hidden_size=256,
                        intermediate_size=688, vocab_size=1024, seq_len=32, batch_size=2)
    graph = autopipe.trace(spec.model, spec.example_inputs)
    p = estimate(graph, spec.example_inputs, device_spec="a100")
    params = sum(q.numel() for q in spec.model.parameters())
    embedding = spec.model.get_input_embeddings().weight.numel()  # a lookup: no FLOPs
    tokens = 2 * 32
    assert sum(p.meta["flops"].values()) == pytest.approx(6 * (params - embedding) * tokens, rel=0.1)


def test_attention_saves_no_score_matrix() -> None:
    """Priced as the fused GPU kernel: no per-head seq × seq score matrix is kept for backward.

    What grows with the sequence is the float mask bias (one value per query-key pair,
    shared by the 4 heads); the math path would keep at least 4 such values per pair.
    """
    small = example_spec("llama", device="meta", num_hidden_layers=1, seq_len=64)
    large = example_spec("llama", device="meta", num_hidden_layers=1, seq_len=512)
    per_token = []
    for spec in (small, large):
        graph = autopipe.trace(spec.model, spec.example_inputs)
        p = estimate(graph, spec.example_inputs)
        per_token.append(p.activation_bytes / spec.example_inputs[0].numel())
    growth = per_token[1] - per_token[0]
    assert growth <= 4 * (512 - 64) * 1.05


def test_unknown_dtype_rate(traced: Traced) -> None:
    spec, graph = traced["mlp"]
    only_bf16 = DeviceSpec(name="bf16only", peak_flops={"bfloat16": 1e12}, memory_bandwidth=1e11,
                           memory=2**30, link_bandwidth=1e10)
    with pytest.raises(DeviceSpecError, match="no peak_flops for float32"):
        estimate(graph, spec.example_inputs, device_spec=only_bf16)
    assert estimate(graph, spec.example_inputs, device_spec=only_bf16, dtype="bf16").forward_s > 0


def test_spec_by_name_or_object(traced: Traced) -> None:
    spec, graph = traced["mlp"]
    a = estimate(graph, spec.example_inputs, device_spec="a100")
    b = estimate(graph, spec.example_inputs, device_spec=load_device_spec("a100"))
    assert a.to_json()["nodes"] == b.to_json()["nodes"]
    with pytest.raises(DeviceSpecError, match="unknown device spec"):
        estimate(graph, spec.example_inputs, device_spec="nope")


class _Views(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(16, 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(torch.mm(x.view(16, 16), self.w).t())


def test_host_dispatch_counts_views() -> None:
    """Every aten call costs the host its dispatch time, views too ([Note: the launch queue])."""
    spec = DeviceSpec(name="host", peak_flops={"float32": 1e30}, memory_bandwidth=1e30, memory=2**30,
                      link_bandwidth=1e10, dispatch_forward_s=1e-3, dispatch_backward_s=2e-3)
    x = torch.randn(256)
    graph = autopipe.trace(_Views(), (x,))
    p = estimate(graph, (x,), device_spec=spec)
    assert p.meta["aten_calls"]["forward"] == 4  # view, mm, transpose, relu
    assert [round(n.forward_s * 1e3, 6) for n in p.nodes if n.op.startswith("call")] == [1, 1, 1, 1]
    assert p.meta["kernels"]["forward"] == 2  # only mm and relu run kernels
    # backward: relu's kernel, the transpose's gradient (a view), mm's weight gradient
    calls = p.meta["aten_calls"]["backward"]
    assert calls >= 3 and p.backward_s == pytest.approx(2e-3 * calls)


def test_queue_lies_between_host_and_device(traced: Traced) -> None:
    """Through the launch queue a phase takes at least its host time and its device time, and at
    most their sum; every node's share is non-negative."""
    spec, graph = traced["mlp"]
    h200 = load_device_spec("h200")
    p = estimate(graph, spec.example_inputs, device_spec=h200)
    device = estimate(graph, spec.example_inputs,
                      device_spec=dataclasses.replace(h200, dispatch_forward_s=0.0, dispatch_backward_s=0.0))
    assert all(n.forward_s >= 0 and n.backward_s >= 0 for n in p.nodes)
    calls = p.meta["aten_calls"]
    for got, dev, host in ((p.forward_s, device.forward_s, calls["forward"] * h200.dispatch_forward_s),
                           (p.backward_s, device.backward_s, calls["backward"] * h200.dispatch_backward_s)):
        assert max(host, dev) * (1 - 1e-9) <= got <= (host + dev) * (1 + 1e-9)


def test_runtime_checks_are_skipped_on_meta_and_run_when_measured() -> None:
    """LLaVA's exported graph checks its image tokens against its image features by value
    ([Note: runtime checks on meta tensors]): an estimate skips that chain, a measurement
    runs it, and both price every other node."""
    from autopipe.trace.graph import checks_only
    from tests.zoo import llava

    spec = llava()
    graph = autopipe.trace(spec.model, spec.example_inputs)
    checks = checks_only(graph.gm)
    targets = {str(n.target) for n in graph.gm.graph.nodes if n.name in checks}
    assert "aten.item.default" in targets and "aten._assert_scalar.default" in targets
    assert all(u.name in checks for n in graph.gm.graph.nodes if n.name in checks for u in n.users)
    target = spec.batch(1)[1]
    e = estimate(graph, spec.example_inputs, loss_fn=spec.loss_fn, target=target, progress=False)
    m = measure(graph, spec.example_inputs, loss_fn=spec.loss_fn, target=target, warmup=0,
                repeats=1, progress=False)
    for n in e.nodes:
        if n.name in checks:
            assert n.forward_s == 0 and n.activation_bytes == 0
    assert {n.name for n in e.nodes} == {n.name for n in m.nodes}
    assert sum(n.forward_s for n in e.nodes) > 0 and e.loss is not None


class _MaskedWrite(torch.nn.Module):
    """Kosmos-2's pattern: image features written into the text embeddings at the image
    tokens' positions (``x[mask] = rows``: index_put_ with a boolean index), and a masked
    fill of one value."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.img = torch.nn.Embedding(10, 8), torch.nn.Linear(6, 8)
        self.head = torch.nn.Linear(8, 10)

    def forward(self, ids: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        x = self.emb(ids)
        x[ids == 9] = self.img(image).reshape(-1, 8)
        x[ids == 0] = 0.0
        return self.head(x)


def test_masked_writes_are_estimated() -> None:
    """A boolean-mask write runs on meta tensors as a masked scatter or fill (torch refuses
    index_put with a boolean index there: [Note: masked writes on meta tensors]) and gets a
    cost."""
    ids, image = torch.tensor([[9, 1, 2, 0], [9, 4, 0, 6]]), torch.randn(2, 6)
    graph = autopipe.trace(_MaskedWrite(), (ids, image))
    writes = [n.name for n in graph.nodes if "index_put" in n.target]
    assert writes
    p = estimate(graph, (ids, image))
    for name in writes:
        node = next(n for n in p.nodes if n.name == name)
        assert node.forward_s > 0
