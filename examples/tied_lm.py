"""A language model of plain torch layers whose 32k-word head is tied to its embedding.

The case where the loss and the head dominate the last stage: 8
``nn.TransformerEncoderLayer`` blocks of width 128 between an embedding and a
vocabulary head that share one weight, trained with a cross-entropy over 32,768
words.
"""

from __future__ import annotations

import torch
from torch import nn

from autopipe import ModelSpec
from autopipe.spec import cross_entropy, generator


class TiedLM(nn.Module):
    def __init__(self, vocab: int, width: int, layers: int, heads: int, seq_len: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(torch.zeros(seq_len, width))
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(width, heads, dim_feedforward=4 * width, dropout=0.0,
                                       batch_first=True, norm_first=True)
            for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.embed.weight  # tied

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens) + self.pos
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h))


def build(*, vocab_size: int = 32768, width: int = 128, layers: int = 8, heads: int = 4,
          seq_len: int = 64, batch_size: int = 2, device: str = "cpu", seed: int = 0) -> ModelSpec:
    """The tied LM; ``batch_size`` sequences of ``seq_len`` tokens are one micro-batch."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = TiedLM(vocab_size, width, layers, heads, seq_len)

    def batch(n: int, step: int = 0) -> tuple[tuple[torch.Tensor], torch.Tensor]:
        g = generator(n, step, seed)
        tokens = torch.randint(0, vocab_size, (n * batch_size, seq_len + 1), generator=g)
        return (tokens[:, :-1].contiguous().to(device),), tokens[:, 1:].contiguous().to(device)

    return ModelSpec(model=model, example_inputs=batch(1)[0], loss_fn=cross_entropy,
                     batch=batch, name="tied_lm")
