"""Tests for autopipe/batching.py: example inputs cut or tiled to another micro-batch size."""

from __future__ import annotations

import pytest
import torch

from autopipe.batching import example_batch, resize_batch
from autopipe.errors import SpecError


def test_cut_and_tile_along_dim_0() -> None:
    x = torch.arange(12).reshape(4, 3)
    mask = torch.ones(1, 3)
    args, kwargs = resize_batch((x, 7, [x]), {"mask": mask, "extra": {"y": x}}, 2)
    assert torch.equal(args[0], x[:2]) and args[1] == 7 and torch.equal(args[2][0], x[:2])
    assert kwargs["mask"] is mask and torch.equal(kwargs["extra"]["y"], x[:2])
    (big,), _ = resize_batch((x,), None, 10)
    assert big.shape == (10, 3)
    assert torch.equal(big[:4], x) and torch.equal(big[4:8], x) and torch.equal(big[8:], x[:2])


def test_meta_tensors_and_the_batch_of_the_first_tensor() -> None:
    ids = torch.empty(4, 64, dtype=torch.long, device="meta")
    assert example_batch(("text", ids), {}) == 4
    (_, out), _ = resize_batch(("text", ids), {}, 16)
    assert out.shape == (16, 64) and out.device.type == "meta"


def test_no_batch_dimension() -> None:
    with pytest.raises(SpecError, match="no tensor with a batch dimension"):
        example_batch((torch.tensor(3.0), "x"), None)
    with pytest.raises(SpecError, match="micro-batch size 0"):
        resize_batch((torch.ones(2, 2),), None, 0)
