"""Tiny models shared by the tests (the real ones live in examples/)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from benchmarks import bench_layers


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


class InPlace(nn.Module):
    """Writes its inputs in place, some of which later nodes read again by their old name.

    ``pos`` is an index that ``add_`` moves by one, as T5's relative-position buckets do:
    a profiler that runs the ``add_`` more than once indexes out of the table.
    """

    def __init__(self, dim: int = 8, table: int = 6) -> None:
        super().__init__()
        self.inp = nn.Linear(dim, dim)
        self.act = nn.ReLU(inplace=True)
        self.out = nn.Linear(dim, dim)
        self.table = nn.Embedding(table, dim)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        h.mul_(2.0)  # h is read again below by this name, not through the mul_ node
        h.add_(x)
        h.masked_fill_(x > 0.5, 0.0)
        g = self.act(h)  # h is g now
        g = torch.nn.functional.relu(g - 0.1, inplace=True)
        p = pos.clone()
        p.add_(pos.max())  # index + (table - 1) / 2 stays in range only when added once
        return self.out(h + g) + self.table(p)


def in_place_inputs(batch: int = 4, dim: int = 8, table: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Example inputs of ``InPlace``: activations and an index into half its table."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, dim, generator=g), torch.randint(0, table // 2, (batch,), generator=g)


class T5Pair(bench_layers.T5Pair):
    """A tiny Hugging Face T5ForConditionalGeneration taking (encoder_ids, decoder_ids)
    positionally; ``overrides`` change its ``T5Config`` (e.g. ``num_layers=3``)."""

    def __init__(self, vocab: int = 64, **overrides: Any) -> None:
        from transformers import T5Config, T5ForConditionalGeneration

        cfg = T5Config(**{**dict(vocab_size=vocab, d_model=16, d_kv=4, d_ff=32, num_layers=1,
                                 num_decoder_layers=1, num_heads=4, use_cache=False, dropout_rate=0.0,
                                 relative_attention_num_buckets=8, relative_attention_max_distance=16),
                          **overrides})
        super().__init__(T5ForConditionalGeneration(cfg))


class ChannelsLastGroupNorm(nn.Module):
    """A convolution whose output, mixed by a linear layer in NHWC order and permuted back
    (channels-last strides, as Mask2Former's Swin features are), goes into a group norm, then a head:
    torch's CPU group-norm backward crashes on it when asked for the weight's gradient alone
    ([Note: group norm in a weight pass])."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.mix = nn.Linear(8, 8)
        self.norm = nn.GroupNorm(4, 8)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mix(self.conv(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.head(self.norm(h).mean((2, 3)))
