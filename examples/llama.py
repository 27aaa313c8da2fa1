"""Llama (Hugging Face LlamaForCausalLM, random init); presets for the 7B and 70B shapes."""

from __future__ import annotations

from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from autopipe import ModelSpec
from autopipe.spec import cross_entropy, generator

PRESETS: dict[str, dict[str, Any]] = {
    # shapes of the published Llama-2 checkpoints (config.json of each)
    "7b": dict(num_hidden_layers=32, hidden_size=4096, intermediate_size=11008,
               num_attention_heads=32, num_key_value_heads=32, vocab_size=32000),
    "13b": dict(num_hidden_layers=40, hidden_size=5120, intermediate_size=13824,
                num_attention_heads=40, num_key_value_heads=40, vocab_size=32000),
    "70b": dict(num_hidden_layers=80, hidden_size=8192, intermediate_size=28672,
                num_attention_heads=64, num_key_value_heads=8, vocab_size=32000),
}


TINY: dict[str, Any] = dict(num_hidden_layers=4, hidden_size=128, intermediate_size=344,
                            num_attention_heads=4, num_key_value_heads=2, vocab_size=8192)
"""The shape without a preset."""


def build(*, preset: str | None = None, num_hidden_layers: int | None = None, hidden_size: int | None = None,
          intermediate_size: int | None = None, num_attention_heads: int | None = None,
          num_key_value_heads: int | None = None, vocab_size: int | None = None, seq_len: int = 64,
          batch_size: int = 4, device: str = "cpu", dtype: str = "float32", seed: int = 0) -> ModelSpec:
    """A Llama; ``preset="7b"``/``"70b"`` with ``device="meta"`` gives the real shapes, no memory.

    The shape is the preset's (else ``TINY``), where a size given here does not replace it
    (``preset="7b", num_hidden_layers=4``: four of the 7B's layers). On ``device="meta"``
    only the weights are meta: batches are made on the CPU, and ``autopipe train`` gives
    each rank real weights for its own stages (``--init`` or ``init_weights``).
    """
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    given = dict(num_hidden_layers=num_hidden_layers, hidden_size=hidden_size,
                 intermediate_size=intermediate_size, num_attention_heads=num_attention_heads,
                 num_key_value_heads=num_key_value_heads, vocab_size=vocab_size)
    shape = {**(PRESETS[preset] if preset is not None else TINY),
             **{k: v for k, v in given.items() if v is not None}}
    cfg = LlamaConfig(**shape, max_position_embeddings=max(seq_len, 128), use_cache=False,
                      attention_dropout=0.0, tie_word_embeddings=False,
                      bos_token_id=0, eos_token_id=0, pad_token_id=0)
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(getattr(torch, dtype))
    vocab = int(shape["vocab_size"])
    data = "cpu" if device == "meta" else device  # a meta model trains on real batches

    def batch(n: int, step: int = 0) -> tuple[tuple[torch.Tensor], torch.Tensor]:
        g = generator(n, step, seed)
        tokens = torch.randint(0, vocab, (n * batch_size, seq_len + 1), generator=g)
        return (tokens[:, :-1].to(data),), tokens[:, 1:].to(data)

    # per module, as transformers initialises a model it loads on the meta device
    return ModelSpec(model=model, example_inputs=batch(1)[0], loss_fn=cross_entropy,
                     batch=batch, name=f"llama-{preset}" if preset else "llama",
                     init_weights=model._init_weights)
