"""Tiny models shared by the tests (the real ones live in examples/)."""

from __future__ import annotations

import torch
from torch import nn


class TiedMLP(nn.Module):
    """Embedding and output head share one weight, in an fx-traceable model."""

    def __init__(self, vocab: int = 50, dim: int = 16) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.mid = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mid(self.emb(x))))


class DataDependent(nn.Module):
    """Python control flow on tensor values: symbolic_trace fails, export fails too."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        for _ in range(int(h.abs().sum().item() * 1000) % 3 + 1):
            h = h + torch.nonzero(h).float().sum()
        if h.sum() > 0:
            return h
        return -h


class NeedsExport(nn.Module):
    """Branches on a shape-dependent Python value symbolic_trace cannot see; export can."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 1:
            x = x * 2
        return self.lin(x)
