"""The most bytes a piece of code holds at once: every storage its operators make, counted
from its making until it is freed (works on CPU, CUDA and meta tensors alike)."""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from autopipe.profile._saved import storage_key


class PeakBytes(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Within ``with PeakBytes(exclude) as p:``, ``p.peak`` is the most bytes that the
    operators run there made and still held at once; ``p.live`` what is still held.
    Storages of ``exclude`` (the code's inputs, made before) are never counted, not even
    through a view an operator returns.

    A storage is counted when an operator first returns it and uncounted when it is freed
    (a finalizer on the storage object, which torch keeps alive as long as the storage).
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.live = 0
        self.peak = 0
        self._held: set[int] = {storage_key(t) for t in exclude}

    def counts(self, t: torch.Tensor) -> bool:
        """Whether ``t``'s storage is counted (every tensor's here; subclasses may say less)."""
        return True

    def made(self, func: Any, key: int, nbytes: int) -> None:
        """``func`` made storage ``key`` and it is now counted (a hook for subclasses)."""

    def new_peak(self) -> None:
        """``peak`` has just grown (a hook for subclasses)."""

    def _freed(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self._held.discard(key)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        grew = False
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor) or not self.counts(t):
                continue
            storage = t.untyped_storage()
            key = storage_key(t)
            if key in self._held:
                continue
            nbytes = int(storage.nbytes())
            self._held.add(key)
            self.live += nbytes
            weakref.finalize(storage, self._freed, key, nbytes)
            self.made(func, key, nbytes)
            if self.live > self.peak:
                self.peak, grew = self.live, True
        if grew:
            self.new_peak()
        return out
