"""Parsing and printing of byte sizes ("80GiB", "512MiB", 1024)."""

from __future__ import annotations

import math
import re

from autopipe.errors import AutopipeError

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: str | int | float) -> int:
    """Turn ``"80GiB"``, ``"512MiB"``, ``"1.5GB"`` or a byte count into bytes.

    Raises:
        AutopipeError: the text is not a size.
    """
    if isinstance(value, bool):
        raise AutopipeError(f"size {value!r} is not a number of bytes", hint="write e.g. 80GiB")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):  # int() of it raised OverflowError or ValueError (until 2026-12-07)
            raise AutopipeError(f"size {value} is not a finite number of bytes", hint="write e.g. 80GiB")
        if value < 0:
            raise AutopipeError(f"size {value} is negative", hint="write e.g. 80GiB")
        return int(value)
    m = _SIZE.match(value)
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _UNITS:
        raise AutopipeError(
            f"cannot read size {value!r}",
            hint="write a number of bytes or a number with a unit: 80GiB, 512MiB, 40GB",
        )
    size = float(m.group(1)) * _UNITS[unit]
    if not math.isfinite(size):  # "1e400": an OverflowError traceback until 2026-12-07
        raise AutopipeError(f"size {value!r} is too large to be a number of bytes",
                            hint="write e.g. 80GiB")
    return int(size)


def format_size(n: float) -> str:
    """Print bytes with a binary unit: ``format_size(3 * 2**30) == "3.00 GiB"``."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def format_seconds(s: float) -> str:
    """Print seconds with a readable unit."""
    if s >= 1:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3f} ms"
    return f"{s * 1e6:.1f} µs"
