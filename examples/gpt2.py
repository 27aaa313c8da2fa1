"""GPT-2 (Hugging Face GPT2LMHeadModel, random init) with tied input and output embeddings."""

from __future__ import annotations

import math

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from autopipe import ModelSpec
from autopipe.spec import cross_entropy, generator


def build(*, n_layer: int = 4, n_embd: int = 128, n_head: int = 4, vocab_size: int = 8192,
          seq_len: int = 64, batch_size: int = 4, dropout: float = 0.0, device: str = "cpu",
          seed: int = 0) -> ModelSpec:
    """A small GPT-2 whose vocabulary head is the heaviest layer (as in real LMs); ``dropout``
    on the embeddings, the residuals and the attention weights (0: none)."""
    cfg = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=vocab_size,
                     n_positions=max(seq_len, 64), bos_token_id=0, eos_token_id=0,
                     resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                     use_cache=False, tie_word_embeddings=True)
    torch.manual_seed(seed)
    with torch.device(device):
        model = GPT2LMHeadModel(cfg)

    data = "cpu" if device == "meta" else device  # a meta model trains on real batches

    def batch(n: int, step: int = 0) -> tuple[tuple[torch.Tensor], torch.Tensor]:
        g = generator(n, step, seed)
        tokens = torch.randint(0, vocab_size, (n * batch_size, seq_len + 1), generator=g)
        return (tokens[:, :-1].to(data),), tokens[:, 1:].to(data)

    # GPT-2 scales its residual projections by 1/sqrt(2 n_layer) at init; transformers does
    # it from the parent block, so a module-by-module init names them itself
    residual = {id(m) for name, m in model.named_modules() if name.endswith(".c_proj")}
    scaled = cfg.initializer_range / math.sqrt(2 * n_layer)

    def init_weights(module: torch.nn.Module) -> None:
        model._init_weights(module)
        if id(module) in residual:
            torch.nn.init.normal_(module.weight, mean=0.0, std=scaled)

    return ModelSpec(model=model, example_inputs=batch(1)[0], loss_fn=cross_entropy,
                     batch=batch, name="gpt2", init_weights=init_weights)
