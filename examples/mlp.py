"""A deep MLP classifier: the simplest chain to partition."""

from __future__ import annotations

import torch
from torch import nn

from autopipe import ModelSpec
from autopipe.spec import generator


class MLP(nn.Module):
    def __init__(self, in_dim: int, hidden: int, layers: int, classes: int) -> None:
        super().__init__()
        self.inp = nn.Linear(in_dim, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden, hidden), nn.GELU()) for _ in range(layers))
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.inp(x))
        for block in self.blocks:
            h = block(h)
        return self.head(h)


def build(*, in_dim: int = 64, hidden: int = 256, layers: int = 8, classes: int = 10,
          batch_size: int = 8, device: str = "cpu", seed: int = 0) -> ModelSpec:
    """An MLP with ``layers`` hidden blocks; ``batch_size`` is one micro-batch."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = MLP(in_dim, hidden, layers, classes)

    def batch(n: int, step: int = 0) -> tuple[tuple[torch.Tensor], torch.Tensor]:
        g = generator(n, step, seed)
        x = torch.randn(n * batch_size, in_dim, generator=g)
        y = torch.randint(0, classes, (n * batch_size,), generator=g)
        return (x.to(device),), y.to(device)

    return ModelSpec(model=model, example_inputs=batch(1)[0],
                     loss_fn=nn.functional.cross_entropy, batch=batch, name="mlp")
