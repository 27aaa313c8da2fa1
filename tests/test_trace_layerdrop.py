"""Tests for autopipe/trace/_layerdrop.py: a trace error names the LayerDrop setting to zero."""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn

import autopipe
from autopipe.errors import TraceError
from autopipe.trace._layerdrop import layerdrop_hint, layerdrop_settings


class _Config:
    """A stand-in for a Hugging Face config."""

    def __init__(self, **kw: float) -> None:
        self.__dict__.update(kw)


class _Dropping(nn.Module):
    """Skips each layer at random while training, as Wav2Vec2's encoder does."""

    def __init__(self, **config: float) -> None:
        super().__init__()
        self.config = _Config(**config)
        self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            skip = False
            if self.training and self.config.__dict__.get("layerdrop", 0.0) > 0.0:
                skip = bool(torch.rand([], device=x.device) < self.config.layerdrop)
            if not skip:
                x = layer(x)
        return x


def test_trace_error_names_the_layerdrop_to_zero() -> None:
    with pytest.raises(TraceError) as e:
        autopipe.trace(_Dropping(layerdrop=0.1), (torch.randn(2, 4),))
    assert "config.layerdrop=0.1" in str(e.value.hint) and "_Config(..., layerdrop=0)" in str(e.value.hint)
    autopipe.trace(_Dropping(layerdrop=0.0), (torch.randn(2, 4),))  # the fix it names works


def test_settings_found() -> None:
    model = nn.Sequential(_Dropping(encoder_layerdrop=0.2, decoder_layerdrop=0.0, dropout=0.5))
    assert layerdrop_settings(model) == [("_Config", "encoder_layerdrop", 0.2)]
    assert layerdrop_hint(model.eval()) is None  # no layer is skipped in eval mode
    assert layerdrop_hint(_Dropping(layerdrop=0.0)) is None
    assert layerdrop_hint(nn.Linear(2, 2)) is None
    odd = nn.Linear(2, 2)
    odd.config = types.SimpleNamespace(layerdrop=True)  # type: ignore[assignment]
    assert layerdrop_hint(odd) is None


def test_wav2vec2_default_config() -> None:
    """The model the defect was found on: Wav2Vec2's default layerdrop is 0.1."""
    hf = pytest.importorskip("transformers")
    cfg = hf.Wav2Vec2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=32, conv_dim=(8, 8), conv_stride=(5, 4),
                            conv_kernel=(10, 4), num_conv_pos_embeddings=8,
                            num_conv_pos_embedding_groups=2)
    with pytest.raises(TraceError) as e:
        autopipe.trace(hf.Wav2Vec2Model(cfg), (torch.randn(1, 400),))
    assert "Wav2Vec2Config(..., layerdrop=0)" in str(e.value.hint)
