"""Counting the bytes autograd saves for backward, once per storage, parameters excluded."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch


def storage_key(t: torch.Tensor) -> int:
    """Identity of a tensor's storage (the StorageImpl address; works on meta tensors too)."""
    return int(t.untyped_storage()._cdata)


class SavedBytes:
    """Bytes saved for backward, deduplicated by storage over everything it has seen.

    [Note: attributing saved tensors to nodes]
    A storage saved by several nodes (Llama's normed hidden state is saved by the q, k
    and v projections) is counted once, for the first node that saves it, so that the
    per-node sum equals what a whole-model forward keeps alive. Parameters and buffers
    live on the device anyway and are never counted. The counter keeps a reference to
    every storage it counted, so that a freed storage's address cannot be reused by a
    new tensor and mistaken for it.

    Args:
        exclude: tensors (parameters, buffers, constants) whose storages are not activations.
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()) -> None:
        self._exclude = {storage_key(t) for t in exclude}
        self._seen: dict[int, torch.Tensor] = {}
        self.total = 0
        """Bytes counted so far."""

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().nbytes() == 0:
            return t
        key = storage_key(t)
        if key in self._exclude or key in self._seen:
            return t
        self._seen[key] = t
        self.total += int(t.untyped_storage().nbytes())
        return t

    @contextmanager
    def count(self) -> Iterator[None]:
        """Within this block, count what autograd saves."""
        with torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack):
            yield

    def release(self) -> None:
        """Drop the references kept for deduplication (the counts stay)."""
        self._seen.clear()


def _unpack(t: torch.Tensor) -> torch.Tensor:
    return t
