"""Whether an op failed on meta tensors because it reads values (``.item()`` and its kind)."""

from __future__ import annotations

_NEEDS_VALUES = (
    "cannot be called on meta tensors",  # .item(), float(), bool(), int()
    "Cannot copy out of meta tensor",  # .tolist(), .cpu()
    "data-independent implementation does not exist",  # nonzero, boolean indexing
    "no fake impl or Meta kernel registered",
    "can't convert meta device type tensor to numpy",
)
"""What torch says (2.13) where code asks a meta tensor for its values."""


def reads_values(e: BaseException | None) -> bool:
    """Whether ``e``, raised running code on meta tensors, came from reading values."""
    return e is not None and any(s in str(e) for s in _NEEDS_VALUES)
