"""Tests for autopipe/profile/_saved.py: saved-for-backward bytes."""

from __future__ import annotations

import torch

from autopipe.profile._saved import SavedBytes


def test_counts_each_storage_once() -> None:
    x = torch.randn(16, 8, requires_grad=True)
    saved = SavedBytes()
    with saved.count():
        a = x.sin()   # saves x
        b = x.cos()   # saves x again: not counted twice
        c = a * b     # saves a and b
    assert saved.total == 3 * 16 * 8 * 4
    del c


def test_parameters_excluded() -> None:
    lin = torch.nn.Linear(8, 4)
    x = torch.randn(2, 8, requires_grad=True)
    saved = SavedBytes(exclude=list(lin.parameters()))
    with saved.count():
        lin(x)  # saves x and the weight (a view of it): only x counts
    assert saved.total == 2 * 8 * 4


def test_views_count_their_whole_storage() -> None:
    x = torch.randn(10, 10, requires_grad=True)
    y = x * 1
    saved = SavedBytes()
    with saved.count():
        y[:2].exp()  # saves its output (new storage); nothing of y
        z = y[:5] * y[5:]  # saves two views of y: the 400-byte storage once
    assert saved.total == 2 * 10 * 4 + 10 * 10 * 4
    del z


def test_nothing_saved_without_grad() -> None:
    saved = SavedBytes()
    with saved.count():
        torch.randn(4, 4).sin()
    assert saved.total == 0
