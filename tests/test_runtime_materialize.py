"""Tests for autopipe/runtime/materialize.py: each rank makes only its own stages' tensors, from a
file or an initialiser, and a meta-built model starts from the same weights on any layout."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file, save_model
from torch import nn

import autopipe
from autopipe import ModelSpec
from autopipe.errors import SpecError, WeightsError
from autopipe.runtime.materialize import check_init, materialize_stages
from autopipe.runtime.split import Split, split_graph

from .conftest import example_spec
from .runtime_cases import TINY
from .runtime_plans import hand_plan


def _meta_split(example: str, stages: int = 2, **knobs: Any) -> tuple[ModelSpec, Split]:
    """A meta-built example split into ``stages`` (a fresh model: what one rank holds)."""
    spec = example_spec(example, **{**TINY[example], "device": "meta", **knobs})
    graph = autopipe.trace(spec.model, spec.example_inputs)
    return spec, split_graph(graph, hand_plan(graph, stages))


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return dict([*module.named_parameters(remove_duplicate=False), *module.named_buffers()])


@pytest.fixture(scope="module")
def gpt2_weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, torch.Tensor], dict[str, Path]]:
    """A CPU-built tiny GPT-2 (another seed than any test's) saved in each format."""
    model = example_spec("gpt2", **TINY["gpt2"], seed=5).model
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out = tmp_path_factory.mktemp("weights")
    save_model(model, str(out / "gpt2.safetensors"))  # keeps one name of the tied pair
    torch.save(model.state_dict(), out / "gpt2.pt")  # keeps both
    model.save_pretrained(out / "hf", max_shard_size="100KB")  # sharded, with its index
    assert len(list((out / "hf").glob("*.safetensors"))) >= 2
    assert (out / "hf" / "model.safetensors.index.json").is_file()
    return state, {"safetensors": out / "gpt2.safetensors", "pt": out / "gpt2.pt", "hf": out / "hf"}


@pytest.mark.parametrize("fmt", ["safetensors", "pt", "hf"])
def test_each_rank_reads_only_its_own_tensors(fmt: str, gpt2_weights: tuple[dict[str, torch.Tensor],
                                                                             dict[str, Path]]) -> None:
    state, files = gpt2_weights
    for s in range(2):  # each stage as a rank of its own, with a model of its own
        spec, split = _meta_split("gpt2")
        module = split.stages[s].module
        done = materialize_stages([module], spec, "cpu", init=files[fmt])
        mine = _tensors(module)
        assert not any(t.is_meta for t in mine.values())
        for name, t in mine.items():
            torch.testing.assert_close(t, state[name], rtol=0, atol=0)
        # read: the stage's own tensors (the tied head under the embedding's name), nothing else
        canonical = {"lm_head.weight": "transformer.wte.weight"}
        assert sorted(done.loaded) == sorted({canonical.get(k, k) for k in mine})
        assert done.bytes == sum(t.numel() * t.element_size() for t in {id(t): t for t in mine.values()}.values())
        assert done.initialised == ()
        assert all(p.device.type == "meta" for p in spec.model.parameters())  # the model stays meta


def test_a_tied_tensor_is_one_tensor_per_rank(gpt2_weights: tuple[dict[str, torch.Tensor],
                                                                  dict[str, Path]]) -> None:
    _state, files = gpt2_weights
    spec, split = _meta_split("gpt2")
    first, last = split.stages[0].module, split.stages[1].module
    done = materialize_stages([first, last], spec, "cpu", init=files["safetensors"])
    # torch.export reads the tied weight under one name (the head's) in both stages
    assert first.get_parameter("lm_head.weight") is last.get_parameter("lm_head.weight")
    assert done.loaded.count("transformer.wte.weight") == 1


def test_tied_names_with_different_values_are_refused(
        tmp_path: Path, gpt2_weights: tuple[dict[str, torch.Tensor], dict[str, Path]]) -> None:
    """A file with the tied embedding and head under both names, different: its model did
    not tie them. Until 2026-12-07 the first name was read, silently (torch keeps the last)."""
    state, _ = gpt2_weights
    both = {k: v.clone() for k, v in state.items()}
    both["transformer.wte.weight"] = torch.zeros_like(both["transformer.wte.weight"])
    torch.save(both, tmp_path / "untied.pt")
    torch.save(state, tmp_path / "tied.pt")  # both names, one value: read as before
    spec, split = _meta_split("gpt2")
    materialize_stages([split.stages[0].module], spec, "cpu", init=tmp_path / "tied.pt")
    spec, split = _meta_split("gpt2")
    with pytest.raises(WeightsError, match="transformer.wte.weight and lm_head.weight with different values"):
        materialize_stages([split.stages[0].module], spec, "cpu", init=tmp_path / "untied.pt")


def test_a_bfloat16_checkpoint_is_cast_into_a_float32_model(tmp_path: Path) -> None:
    model = example_spec("gpt2", **TINY["gpt2"], seed=5).model
    half = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    half.pop("lm_head.weight")  # tied: saved once, as Hugging Face does
    save_file(half, str(tmp_path / "bf16.safetensors"))
    spec, split = _meta_split("gpt2")
    floats = sum(v.is_floating_point() for v in half.values())
    assert check_init(spec, tmp_path / "bf16.safetensors") == f"cast {floats} tensors from bfloat16 to float32"
    module = split.stages[1].module
    materialize_stages([module], spec, "cpu", init=tmp_path / "bf16.safetensors")
    canonical = {"lm_head.weight": "transformer.wte.weight"}
    for name, t in _tensors(module).items():
        want = half[canonical.get(name, name)]
        assert t.dtype == (torch.float32 if want.is_floating_point() else want.dtype)
        torch.testing.assert_close(t, want.to(t.dtype), rtol=0, atol=0)


@pytest.mark.slow
def test_meta_init_is_the_same_on_any_layout() -> None:
    """Per-module seeds: two ranks of 2 stages, four of 4 and one process holding the whole model
    start equal ([Note: initialising a meta-built model])."""
    spec = example_spec("llama", **TINY["llama"], device="meta")
    graph = autopipe.trace(spec.model, spec.example_inputs)
    done = materialize_stages([graph.gm], spec, "cpu")
    whole = _tensors(graph.gm)
    assert "model.rotary_emb.inv_freq" in done.initialised  # a non-persistent buffer, set by init_weights
    for stages in (2, 4):
        for s in range(stages):
            spec, split = _meta_split("llama", stages)
            module = split.stages[s].module
            materialize_stages([module], spec, "cpu")
            for name, t in _tensors(module).items():
                assert torch.equal(t, whole[name]), name
    # what transformers gives: norms at one, linear layers N(0, 0.02), the rotary frequencies
    cpu = _tensors(example_spec("llama", **TINY["llama"]).model)
    torch.testing.assert_close(whole["model.rotary_emb.inv_freq"], cpu["model.rotary_emb.inv_freq"])
    assert torch.equal(whole["model.norm.weight"], torch.ones_like(cpu["model.norm.weight"]))
    assert abs(float(whole["lm_head.weight"].detach().std()) - 0.02) < 0.002
    again = example_spec("llama", **TINY["llama"], device="meta")
    g2 = autopipe.trace(again.model, again.example_inputs)
    materialize_stages([g2.gm], again, "cpu", seed=1)
    assert not torch.equal(_tensors(g2.gm)["lm_head.weight"], whole["lm_head.weight"])


def test_init_weights_missing_or_incomplete() -> None:
    spec, split = _meta_split("gpt2")
    spec.init_weights = None  # GPT-2's Conv1D has no reset_parameters
    with pytest.raises(SpecError, match=r"transformer\.h\.0\.attn\.c_attn \(Conv1D\) holds bias, weight "
                                        r"on the meta device and has no reset_parameters"):
        materialize_stages([split.stages[0].module], spec, "cpu")
    spec.init_weights = lambda module: None
    with pytest.raises(SpecError, match=r"initialising transformer\.h\.0\.attn\.c_attn \(Conv1D\) left bias, weight unset") as e:
        materialize_stages([split.stages[0].module], spec, "cpu")
    assert "init_weights" in str(e.value.hint)


def test_reset_parameters_is_the_default() -> None:
    spec = example_spec("mlp", **TINY["mlp"], device="meta")
    graph = autopipe.trace(spec.model, spec.example_inputs)
    materialize_stages([graph.gm], spec, "cpu")
    assert not any(t.is_meta for t in graph.gm.parameters())
    weights = [t.detach() for n, t in graph.gm.named_parameters() if n.endswith("weight")]
    assert all(float(w.abs().max()) <= 1 / w.shape[1] ** 0.5 + 1e-6 for w in weights)  # Linear's bound


def test_real_model_kept_unless_init_given(gpt2_weights: tuple[dict[str, torch.Tensor],
                                                               dict[str, Path]]) -> None:
    state, files = gpt2_weights
    spec = example_spec("gpt2", **TINY["gpt2"])
    graph = autopipe.trace(spec.model, spec.example_inputs)
    before = {k: v.clone() for k, v in _tensors(graph.gm).items()}
    assert materialize_stages([graph.gm], spec, "cpu").bytes == 0
    assert all(torch.equal(v, before[k]) for k, v in _tensors(graph.gm).items())
    materialize_stages([graph.gm], spec, "cpu", init=files["pt"])
    assert all(torch.equal(v, state[k]) for k, v in _tensors(graph.gm).items())


def test_weights_of_another_model_are_refused_before_any_work(tmp_path: Path) -> None:
    spec = example_spec("llama", **TINY["llama"], device="meta")
    other = example_spec("llama", **{**TINY["llama"], "num_hidden_layers": 1})
    save_model(other.model, str(tmp_path / "small.safetensors"))
    with pytest.raises(WeightsError, match=r"9 missing \(model\.layers\.1\.self_attn\.q_proj\.weight"):
        check_init(spec, tmp_path / "small.safetensors")
    graph = autopipe.trace(spec.model, spec.example_inputs)
    with pytest.raises(WeightsError, match="do not fit the model"):
        materialize_stages([graph.gm], spec, "cpu", init=tmp_path / "small.safetensors")


class _WithConstant(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.scale = torch.ones(4)  # a plain attribute: no parameter, no buffer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * self.scale


def test_a_meta_constant_that_is_not_the_models_is_an_error() -> None:
    with torch.device("meta"):
        model = _WithConstant()
    x = torch.zeros(2, 4)
    loss: Callable[[Any, torch.Tensor], torch.Tensor] = lambda out, t: out.sum()  # noqa: E731
    spec = ModelSpec(model=model, example_inputs=(x,), loss_fn=loss, batch=lambda n, step=0: ((x,), x))
    graph = autopipe.trace(spec.model, spec.example_inputs)
    with pytest.raises(SpecError, match="stage tensor 'scale' is on the meta device but is not a parameter"):
        materialize_stages([graph.gm], spec, "cpu")


class _WeightNormed(nn.Module):
    """A linear layer, then a weight-normed convolution (HuBERT's and WavLM's positional
    convolution), then a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.conv = nn.utils.parametrizations.weight_norm(nn.Conv1d(8, 8, 3, padding=1), dim=2)
        self.out = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.conv(self.inp(x).transpose(1, 2)).transpose(1, 2))


def _weight_normed_spec(device: str, init_weights: Callable[[nn.Module], None] | None = None) -> ModelSpec:
    with torch.device(device):
        model = _WeightNormed()
    return ModelSpec(model=model, example_inputs=(torch.randn(2, 5, 6),), loss_fn=lambda o, t: o.sum(),
                     batch=lambda n, step=0: ((torch.randn(2 * n, 5, 6),), torch.zeros(1)),
                     init_weights=init_weights)


@pytest.mark.parametrize("initialiser", ["reset_parameters", "init_weights"])
def test_a_parametrized_tensor_on_meta_is_initialised_through_its_module(initialiser: str) -> None:
    # [Note: a parametrized tensor on the meta device]: no initialiser knows weight_norm's
    # originals (the norms and the directions); they are made from the module's own
    # initialisation, and each layout gets the same
    def init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            nn.init.normal_(module.weight, std=0.5)
            nn.init.zeros_(module.bias)

    init = init_weights if initialiser == "init_weights" else None
    whole = _weight_normed_spec("meta", init)
    materialize_stages([whole.model], whole, "cpu")
    plist = whole.model.conv.parametrizations.weight
    g, v = plist.original0.detach(), plist.original1.detach()
    assert torch.isfinite(g).all() and torch.isfinite(v).all()
    # the originals are the weight's: g its norm over all but dim 2, v the weight itself
    torch.testing.assert_close(g, v.norm(dim=(0, 1), keepdim=True))
    if init is not None:
        assert whole.model.conv.bias.abs().max() == 0 and 0.3 < float(v.std()) < 0.7
    else:  # Conv1d.reset_parameters' bound, 1 / sqrt(fan_in)
        assert float(v.abs().max()) <= 1 / 24 ** 0.5 + 1e-6

    spec = _weight_normed_spec("meta", init)
    graph = autopipe.trace(spec.model, spec.example_inputs)
    split = split_graph(graph, hand_plan(graph, 2))
    done = materialize_stages([st.module for st in split.stages], spec, "cpu")
    assert any("parametrizations.weight.original1" in c for c in done.initialised)
    staged = {k: v for st in split.stages for k, v in _tensors(st.module).items()}
    expected = _tensors(whole.model)
    assert {k for k in staged if "original" in k} == {k for k in expected if "original" in k}
    for k, value in staged.items():
        torch.testing.assert_close(value, expected[k], rtol=0, atol=0, msg=k)

    with torch.device("meta"):  # the model itself parametrized: its tensor at parametrizations.weight
        bare = nn.utils.parametrizations.weight_norm(nn.Linear(4, 4))
    bare_spec = ModelSpec(model=bare, example_inputs=(torch.randn(2, 4),), loss_fn=lambda o, t: o.sum(),
                          batch=lambda n, step=0: ((torch.randn(2 * n, 4),), torch.zeros(1)),
                          init_weights=init)
    materialize_stages([bare], bare_spec, "cpu")
    g, v = bare.parametrizations.weight.original0.detach(), bare.parametrizations.weight.original1.detach()
    assert torch.isfinite(v).all() and v.abs().max() > 0
    torch.testing.assert_close(g, v.norm(dim=1, keepdim=True))


def test_a_state_dict_with_tied_names_of_different_values_is_refused() -> None:
    """``Pipe.load_state_dict``'s check (``state_keys.check_tied_alike``)."""
    from autopipe.errors import CheckpointError
    from autopipe.runtime.state_keys import check_tied_alike

    w = torch.randn(4, 3)
    tied = [("wte.weight", "head.weight")]
    check_tied_alike({"wte.weight": w, "head.weight": w.clone()}, tied, what="the state dict")
    check_tied_alike({"head.weight": w}, tied, what="the state dict")
    with pytest.raises(CheckpointError, match="wte.weight and head.weight with different values"):
        check_tied_alike({"wte.weight": w, "head.weight": w + 1}, tied, what="the state dict")


def _whisper_encoder(device: str) -> ModelSpec:
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    cfg = WhisperConfig(num_mel_bins=8, encoder_layers=2, encoder_attention_heads=2, d_model=16,
                        encoder_ffn_dim=32, max_source_positions=16)
    with torch.device(device):
        model = WhisperEncoder(cfg)
    return ModelSpec(model=model, example_inputs=(torch.randn(1, 8, 32),),
                     loss_fn=lambda out, y: out.last_hidden_state.pow(2).mean(),
                     batch=lambda n, step=0: ((torch.randn(n, 8, 32),), torch.zeros(n)),
                     init_weights=model._init_weights)


def test_a_parent_module_sets_its_childrens_tensors_as_transformers_does() -> None:
    """Whisper's encoder copies sinusoids into its frozen `embed_positions.weight` from its own
    `_init_weights`, not the embedding's: built on meta, it trained with random positions that
    never learn (requires_grad False) until 2026-12-07 ([Note: a parent's initialisation of its
    children]). Now the sinusoids, on every layout alike; an initialiser of one's own is
    left as it is."""
    from transformers.models.whisper.modeling_whisper import sinusoids

    spec = _whisper_encoder("meta")
    graph = autopipe.trace(spec.model, spec.example_inputs)
    materialize_stages([graph.gm], spec, "cpu")
    whole = _tensors(graph.gm)
    positions = whole["embed_positions.weight"]
    torch.testing.assert_close(positions, sinusoids(*positions.shape), rtol=0, atol=0)
    for stages in (1, 2):
        spec = _whisper_encoder("meta")
        graph = autopipe.trace(spec.model, spec.example_inputs)
        split = split_graph(graph, hand_plan(graph, stages))
        for s in range(stages):
            module = split.stages[s].module
            materialize_stages([module], spec, "cpu")
            for name, t in _tensors(module).items():
                assert torch.equal(t, whole[name]), name
    own = _whisper_encoder("meta")
    hf = own.init_weights
    own.init_weights = lambda module: hf(module) if module is not own.model else None
    graph = autopipe.trace(own.model, own.example_inputs)
    materialize_stages([graph.gm], own, "cpu")
    assert not torch.allclose(_tensors(graph.gm)["embed_positions.weight"], positions)


def _zoo_on_meta(name: str) -> ModelSpec:
    """The zoo's ``name`` built on meta, initialised as transformers initialises it."""
    from transformers import PreTrainedModel

    from .zoo import ZOO

    spec = ZOO[name]()
    with torch.device("meta"):
        meta = ZOO[name]().model
    outer = next(m for m in meta.modules() if isinstance(m, PreTrainedModel))
    spec.model, spec.init_weights = meta, outer._init_weights
    return spec


def test_each_module_gets_the_init_of_the_transformers_model_it_is_in() -> None:
    """A LLaVA's CLIP vision tower is a transformers model of its own: transformers
    initialises its modules by CLIP's `_init_weights` (`smart_apply`), which sets the
    embeddings' `position_ids`; LLaVA's does not. Built on meta, the tower read its patch
    positions from uninitialised memory until 2026-12-07 ("index out of range in self")."""
    spec = _zoo_on_meta("llava")
    graph = autopipe.trace(spec.model, spec.example_inputs)
    materialize_stages([graph.gm], spec, "cpu")
    positions = dict(graph.gm.named_buffers())["model.model.vision_tower.embeddings.position_ids"]
    assert torch.equal(positions, torch.arange(positions.shape[-1]).expand_as(positions))


def test_an_integer_tensor_no_initialiser_sets_is_an_error() -> None:
    """Integer tensors start as their dtype's least value and are checked, as float ones
    start as NaN: an initialiser that leaves one unset is named, not read as garbage."""

    class Counts(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.register_buffer("ids", torch.arange(4), persistent=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x)[:, self.ids]

    with torch.device("meta"):
        model = Counts()
    spec = ModelSpec(model=model, example_inputs=(torch.randn(2, 4),), loss_fn=lambda out, y: out.sum(),
                     batch=lambda n, step=0: ((torch.randn(2 * n, 4),), torch.zeros(2 * n)),
                     init_weights=lambda m: m.reset_parameters() if isinstance(m, nn.Linear) else None)
    graph = autopipe.trace(model, spec.example_inputs)
    with pytest.raises(SpecError, match=r"initialising the model \(Counts\) left ids unset"):
        materialize_stages([graph.gm], spec, "cpu")
    spec.init_weights = lambda m: (m.reset_parameters() if isinstance(m, nn.Linear)
                                   else m.ids.copy_(torch.arange(4)))
    materialize_stages([graph.gm], spec, "cpu")
    assert torch.equal(dict(graph.gm.named_buffers())["ids"], torch.arange(4))


def test_what_transformers_leaves_to_the_constructor_comes_from_reset_parameters() -> None:
    """RegNet's `_init_weights` draws a convolution's weight alone, leaving its bias to the
    constructor, which a meta build never ran: built on meta, it was refused until
    2026-12-07 ([Note: what transformers leaves to the constructor]). Now the bias is what
    `reset_parameters` draws (PyTorch's bound 1/sqrt(fan_in)), on every layout alike."""
    def materialised(stages: int) -> dict[str, torch.Tensor]:
        spec = _zoo_on_meta("regnet")
        graph = autopipe.trace(spec.model, spec.example_inputs)
        split = split_graph(graph, hand_plan(graph, stages))
        for s in range(stages):
            materialize_stages([split.stages[s].module], spec, "cpu")
        return {n: t for s in range(stages) for n, t in _tensors(split.stages[s].module).items()}

    whole = materialised(1)
    name = "regnet.encoder.stages.0.layers.0.layer.2.attention.0"
    bias, weight = whole[f"{name}.bias"], whole[f"{name}.weight"]
    assert not bias.isnan().any() and bias.abs().max() <= 1 / weight[0].numel() ** 0.5
    for n, t in materialised(2).items():
        assert torch.equal(t, whole[n]), n
