"""Keep glibc's malloc from handing large blocks back to the OS between micro-batches (CPU ranks).

# [Note: pinned malloc on CPU ranks]
By default glibc serves a block of 128 KiB or more with its own ``mmap`` (the
threshold grows with what was freed, up to 32 MiB) and trims the heap's free
top; either way the pages go back to the kernel, and the next allocation of
that size takes a page fault on every 4 KiB page it touches. A training step
allocates and frees the same large tensors every micro-batch (a BERT stage's
vocabulary logits and their gradient, fresh ``.grad`` buffers after
``zero_grad(set_to_none=True)``), so a CPU rank pays those faults again and
again: measured here, 8–12 thousand faults per step on BERT's last rank, at
about 1.5 µs each. Pinning the mmap threshold high and switching trimming off
(``mallopt``, the same as ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``)
keeps freed blocks in the process for reuse: after the first step the ranks
take no page faults, the way a GPU caching allocator behaves. The cost is that
the process keeps its peak heap until it exits.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30
"""Blocks below this come from the heap (glibc before 2.35 caps it at 32 MiB; then that is used)."""
TRIM_THRESHOLD = (1 << 31) - 1
"""Free heap top kept before trimming: in effect, never trim."""
ZERO_PAGES_MIN = 1 << 20
"""An embedding weight's gradient of at least this many bytes lives on zero pages on a CPU
rank ([Note: an embedding's gradient on zero pages] in ``autopipe.runtime.grad_accum``)."""
_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


def user_malloc_settings() -> bool:
    """Whether the environment already sets glibc's malloc thresholds (the user's choice wins)."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return any(k in os.environ for k in _ENV) or "glibc.malloc." in tunables


def pin_malloc() -> bool:
    """Pin glibc's mmap and trim thresholds in this process (see [Note: pinned malloc on CPU ranks]).

    Does nothing where the environment sets them itself (``MALLOC_MMAP_THRESHOLD_``,
    ``MALLOC_TRIM_THRESHOLD_``, ``GLIBC_TUNABLES=glibc.malloc...``) or where the C
    library is not glibc.

    Returns:
        Whether both thresholds are now pinned.
    """
    if user_malloc_settings():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mmap = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) or mallopt(_M_MMAP_THRESHOLD, 32 << 20))
    trim = bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return mmap and trim
