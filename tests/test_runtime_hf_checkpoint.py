"""Tests for autopipe/runtime/hf_checkpoint.py: a checkpoint folder written by transformers'
``save_pretrained`` reads back under the model's own names, through the same conversions
``from_pretrained`` applies ([Note: checkpoint names are not module names])."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_model
from torch import nn
from transformers import PreTrainedModel

from autopipe.errors import CheckpointError, WeightsError
from autopipe.runtime.hf_checkpoint import Converted, fit
from autopipe.runtime.materialize import _expected, _model_tensors, materialize_stages
from autopipe.runtime.state_keys import canonical_names, tied_groups
from autopipe.runtime.weights import check_fit, open_weights
from tests.zoo import ZOO

pytest.importorskip("transformers.conversion_mapping", reason="transformers before 5 keeps checkpoint names")

CASES = {
    "mixtral": "model.layers.0.mlp.experts.gate_up_proj",  # one tensor from 2 × 4 experts' projections
    "vit": "vit.layers.0.attention.q_proj.weight",  # renamed: vit.encoder.layer.0.attention.attention.query
    "gpt-neox": "lm_head.weight",  # renamed: embed_out.weight
    "bart": "model.model.shared.weight",  # the checkpoint of the transformers model inside a wrapper
}


def _saved(name: str, folder: Path) -> nn.Module:
    """The zoo model, its transformers model saved to ``folder`` in small shards."""
    model = ZOO[name]().model
    inner = next(m for _, m in model.named_modules() if isinstance(m, PreTrainedModel))
    inner.save_pretrained(folder, max_shard_size="10KB")
    return model


def _fit(model: nn.Module, folder: Path) -> tuple[object, dict[str, str]]:
    weights = open_weights(folder)
    canonical = canonical_names(_model_tensors(model))
    return fit(weights, model, _expected(model), tied_groups(canonical))


@pytest.mark.parametrize("name", list(CASES))
def test_a_saved_checkpoint_reads_back_under_the_models_names(name: str, tmp_path: Path) -> None:
    model = _saved(name, tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    canonical = canonical_names(_model_tensors(model))
    with open_weights(tmp_path) as raw, pytest.raises(WeightsError, match="do not fit"):
        check_fit(raw, _expected(model), tied_groups(canonical))  # the names as saved
    weights, reads = _fit(model, tmp_path)
    assert isinstance(weights, Converted)
    state = model.state_dict()
    assert CASES[name] in reads
    for c, key in reads.items():
        got = weights.read(key)
        assert got.shape == state[c].shape and got.dtype == state[c].dtype, c
        assert torch.equal(got, state[c]), c


def test_a_meta_built_model_materialises_from_the_folder(tmp_path: Path) -> None:
    model = _saved("mixtral", tmp_path)
    spec = ZOO["mixtral"]()
    metas: dict[int, nn.Parameter] = {}
    for module in spec.model.modules():  # parameters on meta, tied ones still one
        for field, p in module._parameters.items():
            if p is not None:
                module._parameters[field] = metas.setdefault(id(p), nn.Parameter(torch.empty_like(p, device="meta")))
    done = materialize_stages([spec.model], spec, "cpu", init=tmp_path)
    assert "model.layers.1.mlp.experts.down_proj" in done.loaded
    want = model.state_dict()
    for key, value in spec.model.state_dict().items():
        assert torch.equal(value, want[key]), key


def test_names_that_fit_are_read_as_they_are(tmp_path: Path) -> None:
    model = ZOO["mixtral"]().model
    save_model(model, str(tmp_path / "w.safetensors"))  # the model's own names
    weights, _ = _fit(model, tmp_path / "w.safetensors")
    assert not isinstance(weights, Converted)


def test_another_models_checkpoint_names_the_converted_misfits(tmp_path: Path) -> None:
    _saved("qwen2-moe", tmp_path)
    with pytest.raises(WeightsError, match=r"do not fit the model: .*missing \(model\.layers\.0\.mlp\.experts\.gate_up_proj"):
        _fit(ZOO["mixtral"]().model, tmp_path)


def test_tensors_transformers_ignores_are_left_unread(tmp_path: Path) -> None:
    """Llama-2's checkpoints hold a ``rotary_emb.inv_freq`` per layer, old BERTs an
    ``embeddings.position_ids``: buffers their models no longer save, which ``from_pretrained``
    skips ([Note: tensors transformers ignores]); ``--init`` skips them too, and says so."""
    from safetensors.torch import save_file

    from autopipe.runtime.materialize import check_init
    from tests.zoo import ZOO as zoo

    for name, extra in (("mistral", ["model.layers.0.self_attn.rotary_emb.inv_freq",
                                     "model.layers.1.self_attn.rotary_emb.inv_freq"]),
                        ("distilbert", ["distilbert.embeddings.position_ids"])):
        spec = zoo[name]()
        state = {k: v + 1 if v.is_floating_point() else v.clone() for k, v in spec.model.state_dict().items()}
        old = {**state, **{k: torch.arange(8) for k in extra}}
        save_file(old, tmp_path / f"{name}.safetensors")
        said = check_init(spec, tmp_path / f"{name}.safetensors")
        count = f"{len(extra)} tensor{'s' if len(extra) > 1 else ''} left unread, as transformers leaves"
        assert said is not None and said.startswith(count) and extra[0] in said
        materialize_stages([spec.model], spec, "cpu", init=tmp_path / f"{name}.safetensors")
        for k, v in spec.model.state_dict().items():
            assert torch.equal(v, state[k]), k
        # any other name the model does not have is still refused
        save_file({**old, "model.layers.0.extra": torch.zeros(1)}, tmp_path / "other.safetensors")
        with pytest.raises(WeightsError, match=r"1 unexpected \(model\.layers\.0\.extra\)"):
            check_init(spec, tmp_path / "other.safetensors")


def test_a_model_of_ones_own_skips_nothing(tmp_path: Path) -> None:
    """Without a transformers model inside, a ``position_ids`` the model does not have is unexpected."""
    from safetensors.torch import save_file

    from autopipe.runtime.materialize import check_init
    from tests.conftest import example_spec

    spec = example_spec("mlp")
    save_file({**spec.model.state_dict(), "embeddings.position_ids": torch.arange(4)}, tmp_path / "w.safetensors")
    with pytest.raises(WeightsError, match=r"1 unexpected \(embeddings\.position_ids\)"):
        check_init(spec, tmp_path / "w.safetensors")


def test_pipe_loads_a_state_dict_in_the_checkpoints_layout(tmp_path: Path) -> None:
    """``Pipe.load_state_dict`` of a ``save_pretrained`` folder's tensors (Mixtral's experts
    one tensor per expert and projection; a Llama-2 ``inv_freq`` beside them) loads what
    ``build(init=FOLDER)`` loads; until 2026-12-07 it refused the checkpoint's names."""
    from safetensors.torch import load_file

    from autopipe import trace
    from autopipe.runtime import build
    from tests.runtime_plans import plan_from_cuts

    model = _saved("mixtral", tmp_path)
    state = {k: v for f in sorted(tmp_path.glob("*.safetensors")) for k, v in load_file(f).items()}
    assert "model.layers.0.block_sparse_moe.experts.0.w1.weight" in state
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.arange(4.0)  # transformers leaves it unread
    spec = ZOO["mixtral"]()
    plan = plan_from_cuts(trace(spec.model, spec.example_inputs, spec.example_kwargs), [], microbatches=1)
    with build(plan, spec, device="cpu") as pipe:
        pipe.load_state_dict(state)
        want = model.state_dict()
        loaded = pipe.state_dict()
        assert set(loaded) == {k for k in want if k in loaded} and "model.layers.1.mlp.experts.down_proj" in loaded
        for k, v in loaded.items():
            assert torch.equal(v, want[k]), k
        with pytest.raises(CheckpointError, match=r"not in the model 1: model\.layers\.0\.extra"):
            pipe.load_state_dict({**state, "model.layers.0.extra": torch.zeros(1)})
        # a state under the model's own names, with a tensor transformers leaves unread
        pipe.load_state_dict({**want, "model.layers.1.self_attn.rotary_emb.inv_freq": torch.arange(4.0)})
