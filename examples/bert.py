"""BERT masked language model (Hugging Face BertForMaskedLM, random init)."""

from __future__ import annotations

import torch
from transformers import BertConfig, BertForMaskedLM

from autopipe import ModelSpec
from autopipe.spec import cross_entropy, generator


def build(*, num_hidden_layers: int = 4, hidden_size: int = 128, num_attention_heads: int = 4,
          intermediate_size: int = 512, vocab_size: int = 8192, seq_len: int = 64,
          batch_size: int = 4, mask_fraction: float = 0.15, dropout: float = 0.0, device: str = "cpu",
          seed: int = 0) -> ModelSpec:
    """A small BERT trained on masked-token prediction (unmasked positions are ignored);
    ``dropout`` on the hidden states and the attention weights (0: none)."""
    cfg = BertConfig(num_hidden_layers=num_hidden_layers, hidden_size=hidden_size,
                     num_attention_heads=num_attention_heads, intermediate_size=intermediate_size,
                     vocab_size=vocab_size, max_position_embeddings=max(seq_len, 128),
                     hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    torch.manual_seed(seed)
    with torch.device(device):
        model = BertForMaskedLM(cfg)
    mask_id = 1

    def batch(n: int, step: int = 0) -> tuple[tuple[torch.Tensor], torch.Tensor]:
        g = generator(n, step, seed)
        tokens = torch.randint(2, vocab_size, (n * batch_size, seq_len), generator=g)
        masked = torch.rand(tokens.shape, generator=g) < mask_fraction
        inputs = tokens.masked_fill(masked, mask_id)
        labels = tokens.masked_fill(~masked, -100)
        return (inputs.to(device),), labels.to(device)

    return ModelSpec(model=model, example_inputs=batch(1)[0], loss_fn=cross_entropy,
                     batch=batch, name="bert")
