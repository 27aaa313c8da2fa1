"""Dtype names accepted by the profilers and the CLI (``fp32``, ``bf16``, ``float16`` …)."""

from __future__ import annotations

import torch

from autopipe.errors import ProfileError

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "fp64": torch.float64,
    "float64": torch.float64,
}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"bf16"`` → ``torch.bfloat16``; None stays None (keep the model's dtype).

    Raises:
        ProfileError: not a floating dtype autopipe knows.
    """
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in DTYPES:
        raise ProfileError(f"unknown dtype {dtype!r}", hint=f"use one of {', '.join(DTYPES)}")
    return DTYPES[key]
