"""Tests for autopipe/trace/: both front ends, graph invariants, ties, fingerprints, errors."""

from __future__ import annotations

import logging
import time

import pytest
import torch
from torch import nn

import autopipe
from autopipe import Graph, ModelSpec
from autopipe.errors import ExampleInputError, TraceError

from .conftest import EXAMPLES, example_spec
from .models import DataDependent, NeedsExport, TiedMLP


def _check_graph(spec: ModelSpec, g: Graph) -> None:
    assert len(g.nodes) > 0
    # every distinct parameter is owned by exactly one node
    owners: dict[str, int] = {}
    for n in g.nodes:
        for p in n.params:
            owners[p] = owners.get(p, 0) + 1
    distinct = dict(spec.model.named_parameters())  # remove_duplicate=True: ties once
    assert set(owners) == set(distinct)
    assert all(c == 1 for c in owners.values())
    assert g.total_param_bytes == sum(p.numel() * p.element_size() for p in distinct.values())
    # every module path names a real module, or the node is top level
    modules = dict(spec.model.named_modules())
    for n in g.nodes:
        assert n.top_level or n.module in modules, (n.name, n.module)
        if n.op in ("call_function", "call_module", "call_method") and n.is_tensor:
            assert n.shape is not None and n.output_bytes >= 0
    assert {n.op for n in g.nodes} >= {"placeholder", "output"}
    assert nx_is_dag(g)


def nx_is_dag(g: Graph) -> bool:
    import networkx as nx

    return bool(nx.is_directed_acyclic_graph(g.dag)) and g.dag.number_of_nodes() == len(g.nodes)


@pytest.mark.parametrize("name", EXAMPLES)
def test_examples_trace(name: str, traced: dict[str, tuple[ModelSpec, Graph]]) -> None:
    spec, g = traced[name]
    _check_graph(spec, g)
    expected = "fx" if name in ("mlp", "resnet", "unet") else "export"
    assert g.frontend == expected
    # the traced module computes what the model computes
    spec.model.eval()
    with torch.no_grad():
        ref = spec.model(*spec.example_inputs, **spec.example_kwargs)
        out = g.unflatten_output(g.gm(*g.flat_inputs(spec.example_inputs, spec.example_kwargs)))
    spec.model.train()
    torch.testing.assert_close(autopipe.spec.logits_of(out), autopipe.spec.logits_of(ref))


def test_tied_weights_recorded_once(traced: dict[str, tuple[ModelSpec, Graph]]) -> None:
    _spec, g = traced["gpt2"]
    assert ("transformer.wte.weight", "lm_head.weight") in g.tied
    readers = [n for n in g.nodes if "transformer.wte.weight" in n.params + n.shared_params]
    assert len(readers) == 2  # the embedding lookup and the vocabulary head
    assert sum("transformer.wte.weight" in n.params for n in readers) == 1


def test_tied_weights_fx() -> None:
    m = TiedMLP()
    g = autopipe.trace(m, (torch.randint(0, 50, (2, 3)),))
    assert g.frontend == "fx"
    assert g.tied == [("emb.weight", "head.weight")]
    assert [n.name for n in g.nodes if n.shared_params] == ["head"]
    assert g.param_owner["emb.weight"] == "emb"


def test_fingerprint_stable_and_sensitive() -> None:
    a = example_spec("gpt2", n_layer=2)
    b = example_spec("gpt2", n_layer=2, seed=7)
    c = example_spec("gpt2", n_layer=3)
    fa, fb, fc = (autopipe.trace(s.model, s.example_inputs).fingerprint for s in (a, b, c))
    assert fa == fb
    assert fa != fc
    m1, m2 = example_spec("mlp", layers=4), example_spec("mlp", layers=5)
    assert (autopipe.trace(m1.model, m1.example_inputs).fingerprint
            != autopipe.trace(m2.model, m2.example_inputs).fingerprint)
    # another micro-batch shape is another graph
    m3 = example_spec("mlp", layers=4, batch_size=3)
    assert (autopipe.trace(m1.model, m1.example_inputs).fingerprint
            != autopipe.trace(m3.model, m3.example_inputs).fingerprint)


def test_falls_back_to_export() -> None:
    g = autopipe.trace(NeedsExport(), (torch.randn(3, 8),))
    assert g.frontend == "export"
    with pytest.raises(TraceError, match="symbolic_trace"):
        autopipe.trace(NeedsExport(), (torch.randn(3, 8),), frontend="fx")


class _RouterCastEachForward(NeedsExport):
    """Converts a layer to the dtype it has inside forward, as Switch Transformers' and
    NLLB-MoE's routers do ([Note: a module's own dtype inside forward])."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.lin = self.lin.to(torch.float32)
        return super().forward(x)


def test_a_module_converted_to_its_own_dtype_inside_forward_exports() -> None:
    model = _RouterCastEachForward()
    weight = model.lin.weight
    x = torch.randn(3, 8)
    g = autopipe.trace(model, (x,))
    assert g.frontend == "export" and model.lin.weight is weight
    assert torch.nn.Module._apply.__qualname__ == "Module._apply"  # torch's own again
    out = g.gm(x)[0]
    torch.testing.assert_close(out, model(x))
    grads = torch.autograd.grad(out.sum(), [p for p in g.gm.parameters()])
    expected = torch.autograd.grad(model(x).sum(), [model.lin.weight, model.lin.bias])
    for a, b in zip(grads, expected):
        torch.testing.assert_close(a, b)


class _NoisyScale(NeedsExport):
    """Builds a distribution in forward, as GroupViT's Gumbel noise does ([Note:
    distributions built inside forward]): its scale from the input, its sample added."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.distributions.Normal(x.mean(), x.std()).log_prob(x)
        noise = torch.distributions.Gumbel(torch.full((), 0.0), torch.full((), 1.0)).sample(x.shape)
        return super().forward(x * scale + 0 * noise)


def test_a_distribution_built_inside_forward_exports() -> None:
    """Its argument checks (a branch on tensor values) are off while tracing, and on again after."""
    before = torch.distributions.Distribution._validate_args
    model, x = _NoisyScale(), torch.randn(3, 8)
    g = autopipe.trace(model, (x,))
    assert g.frontend == "export"
    assert torch.distributions.Distribution._validate_args == before
    torch.testing.assert_close(g.gm(x)[0], model(x))


def test_untraceable_model_quotes_both_reasons() -> None:
    with pytest.raises(TraceError) as info:
        autopipe.trace(DataDependent(), (torch.randn(2, 4),))
    msg = str(info.value)
    assert "torch.fx.symbolic_trace" in msg and "torch.export" in msg
    assert info.value.hint
    assert not isinstance(info.value, ExampleInputError)


class _Reversible(torch.autograd.Function):
    """Reformer's pattern: the forward runs its layer under no_grad, the backward recomputes it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: torch.nn.Module) -> torch.Tensor:  # type: ignore[override]
        ctx.layer = layer
        ctx.save_for_backward(x.detach())
        with torch.no_grad():
            return layer(x) + x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            x = x.detach().requires_grad_()
            torch.autograd.backward(ctx.layer(x) + x, grad)
        return x.grad, None


class _Differentiable(torch.autograd.Function):
    """BLOOM's GeLUFunction pattern: a differentiable forward and its own exact backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return 2 * x * grad


class _MaskedSoftmax(torch.autograd.Function):
    """SEW-D's XSoftmax pattern: the forward zeroes entries of its softmax's output in place
    (saved for its own backward, harmless while the forward records no graph)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = torch.softmax(x, -1)
        out.masked_fill_(x < -1, 0)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (out,) = ctx.saved_tensors
        return torch._softmax_backward_data(grad, out, -1, out.dtype)


class _WithFunction(torch.nn.Module):
    def __init__(self, function: type[torch.autograd.Function]) -> None:
        super().__init__()
        self.function = function
        self.a, self.b, self.c = (torch.nn.Linear(4, 4) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        h = self.function.apply(h, self.b) if self.function is _Reversible else self.b(self.function.apply(h))
        return self.c(h)


def test_custom_function_without_gradient_is_refused() -> None:
    """torch.export keeps only a Function's forward, and traces everything after it under the
    no_grad of that forward too: no parameter would get a gradient ([Note: custom autograd
    Functions])."""
    model = _WithFunction(_Reversible)
    assert model(torch.randn(2, 4)).requires_grad
    with pytest.raises(TraceError, match="_Reversible.*6 of its parameters") as info:
        autopipe.trace(model, (torch.randn(2, 4),), frontend="export")
    assert info.value.hint
    assert torch.autograd.Function.__dict__["apply"].__func__.__qualname__ == "Function.apply"  # restored


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_custom_function_writing_a_saved_value_in_place_is_refused(frontend: str) -> None:
    """Traced, the Function's softmax saves its output for backward and the masked_fill_ then
    writes it: autograd would refuse the first backward of training ([Note: custom autograd
    Functions]); the trace says so, naming the Function, and changes no weight."""
    model = _WithFunction(_MaskedSoftmax)
    model(torch.randn(2, 4)).sum().backward()  # eager: the Function's own backward
    weight = model.a.weight.detach().clone()
    with pytest.raises(TraceError, match="_MaskedSoftmax.*modified by an inplace") as info:
        autopipe.trace(model, (torch.randn(2, 4),), frontend=frontend)
    assert info.value.hint
    assert torch.equal(model.a.weight, weight)


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_custom_function_with_differentiable_forward_traces(frontend: str) -> None:
    g = autopipe.trace(_WithFunction(_Differentiable), (torch.randn(2, 4),), frontend=frontend)
    assert g.gm(torch.randn(2, 4))[0].requires_grad


@pytest.mark.parametrize("inputs, fragment", [
    ((torch.randn(4, 7),), "does not accept"),       # wrong feature size
    ((torch.randn(4, 64), torch.randn(1)), "do not match"),  # extra argument
])
def test_wrong_example_inputs(inputs: tuple[torch.Tensor, ...], fragment: str,
                              caplog: pytest.LogCaptureFixture) -> None:
    spec = example_spec("mlp", layers=2)
    with pytest.raises(ExampleInputError, match=fragment) as info:
        autopipe.trace(spec.model, inputs)
    assert info.value.hint
    # one error, not torch's fake-tensor traceback logged first (until 2026-12-06)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_wrong_inputs_for_hf_model() -> None:
    spec = example_spec("gpt2", n_layer=1)
    with pytest.raises(ExampleInputError):
        autopipe.trace(spec.model, (torch.randn(2, 8),))  # floats where token ids belong


def test_example_inputs_must_be_tuple() -> None:
    with pytest.raises(ExampleInputError, match="tuple"):
        autopipe.trace(torch.nn.Linear(2, 2), torch.zeros(2))  # type: ignore[arg-type]


def test_meta_llama_7b_traces_fast() -> None:
    t0 = time.perf_counter()
    spec = example_spec("llama", num_hidden_layers=32, hidden_size=4096, intermediate_size=11008,
                        num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                        seq_len=128, batch_size=1, device="meta")
    g = autopipe.trace(spec.model, spec.example_inputs)
    elapsed = time.perf_counter() - t0
    assert g.total_param_bytes / 4 == pytest.approx(6.74e9, rel=0.01)
    assert sum(1 for n in g.nodes if n.target == "aten.linear.default") == 32 * 7 + 1
    assert elapsed < 60, f"tracing took {elapsed:.1f} s"


class _MaskedRows(torch.nn.Module):
    """Idefics3's pattern: rows kept by a boolean mask (a size that depends on the data),
    behind a loop over a tensor that torch.fx cannot trace."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = list(x.chunk(2, dim=1))
        return self.lin(b[a.abs().sum(-1) > 0]).sum()


def test_data_dependent_shape_is_refused_by_node() -> None:
    """torch.export traces a boolean-mask index with an unbacked size; the refusal names the
    node and its op (see [Note: data-dependent shapes] in autopipe.trace.frontend)."""
    with pytest.raises(TraceError, match=r"index \(aten.index.Tensor\) has a shape that depends on the data") as info:
        autopipe.trace(_MaskedRows(), (torch.randn(3, 8),))
    assert info.value.hint


def test_untraceable_model_names_the_line_of_model_code() -> None:
    """Each reason ends with the innermost frame of the model's own code (torch's message
    puts it far below its first line, which is all the reason quotes)."""
    with pytest.raises(TraceError, match=r"\(at .*tests/models.py:\d+ in forward: .*\).*\(at .*tests/models.py:\d+ in forward"):
        autopipe.trace(DataDependent(), (torch.randn(2, 4),))


class _PaddedByABuffer(torch.nn.Module):
    """Mimi's pattern: padding computed from an int64 buffer as a tensor and read back by
    ``.item()`` (an unbacked size), then a Python check on a shape made from it, later."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("extra", torch.tensor(2))
        self.lin = torch.nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.pad(x, (0, (self.extra * 1).item()))
        if x.shape[-1] > 1:
            x = x * 2
        return self.lin(x)


def test_a_size_read_from_a_tensor_is_named_where_it_is_read() -> None:
    """The export stops at the check on a shape; the refusal also names the line that read
    the size from a tensor ([Note: sizes read from tensors] in autopipe.trace._unbacked)."""
    with pytest.raises(TraceError, match=r"u0, a size in the failed check, is read from a tensor's value by "
                                         r"aten\.item\.default at .*tests/test_trace\.py:\d+ in forward: "
                                         r"x = torch\.nn\.functional\.pad\(x") as info:
        autopipe.trace(_PaddedByABuffer(), (torch.randn(2, 4),))
    assert "compute it from Python numbers" in str(info.value.hint)


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_tracing_leaves_the_models_buffers_and_the_random_state(frontend: str) -> None:
    """Tracing ran the model once in training mode on buffers it shares with the user's
    model: batch norm's statistics moved (and ``num_batches_tracked`` counted one more
    forward than training made), so checkpoints of a trained model held one forward too
    many (until 2026-12-07); a dropout drew from the random stream the user seeds."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 2))
    x = torch.randn(2, 3, 8, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(7)
    autopipe.trace(model, (x,), frontend=frontend)
    drawn = torch.rand(3)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0, msg=k)
    torch.manual_seed(7)
    torch.testing.assert_close(drawn, torch.rand(3), rtol=0, atol=0)


class _MaskOutsideCompile(nn.Module):
    """Switch Transformers' encoder: a missing attention mask is made only outside compilation
    (``if attention_mask is None and not is_torchdynamo_compiling()``)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None and not torch.compiler.is_compiling():
            mask = torch.ones(x.shape[:2])
        assert mask is not None or torch.compiler.is_compiling()
        return self.proj(x) * mask[:, :, None]  # type: ignore[index]


def test_a_none_input_the_model_fills_in_only_eagerly_is_named() -> None:
    """The model runs on ``(x, None)`` but torch.export stops on the ``None`` ("'NoneType' object
    is not subscriptable"); the hint names the input to pass, not "inputs the model accepts"."""
    model = _MaskOutsideCompile()
    x = torch.randn(2, 3, 4)
    model(x, None)
    with pytest.raises(TraceError, match="NoneType") as info:
        autopipe.trace(model, (x, None), frontend="export")
    assert info.value.hint is not None and info.value.hint.startswith("the example passes None as mask")


class _OwnLoss(nn.Module):
    """Wav2Vec2ForCTC given labels: it checks their values, then computes its own loss."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.head(x)
        if labels is not None and labels.max() >= 3:
            raise ValueError("label values must be <= vocab_size")
        return logits if labels is None else nn.functional.cross_entropy(logits, labels)


def test_labels_given_to_a_model_that_cannot_be_traced_with_them_point_to_loss_fn() -> None:
    """torch.export stops on the check of the labels' values; the hint says to compute the loss
    in loss_fn instead of "make forward free of data-dependent Python control flow"."""
    with pytest.raises(TraceError, match="data-dependent") as info:
        autopipe.trace(_OwnLoss(), (torch.randn(2, 4), torch.tensor([0, 2])), frontend="export")
    assert info.value.hint is not None
    assert info.value.hint.startswith("the example gives the model labels, from which it computes its own loss")


def test_a_meta_model_that_makes_cpu_tensors_in_forward_is_told_why() -> None:
    """SAM built on meta makes its point labels on the CPU in forward; torch.export then
    met them with meta tensors and said only "found at least two devices, cpu and meta",
    under a hint about control flow (until 2026-12-07)."""

    class MakesOnes(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            ones = torch.ones(x.shape[0], 4)  # on the CPU, whatever the weights' device
            return torch.where(ones > 0, self.lin(x), x)

    with torch.device("meta"):
        model = MakesOnes()
    with pytest.raises(TraceError, match="cpu and meta|meta and cpu") as e:
        autopipe.trace(model, (torch.randn(2, 4),))
    assert e.value.hint is not None and e.value.hint.startswith("the model is on the meta device, but its forward")
    autopipe.trace(MakesOnes(), (torch.randn(2, 4),))  # built on the CPU it traces
