"""Tests for autopipe/_units.py: byte sizes read and printed."""

from __future__ import annotations

import pytest

from autopipe._units import parse_size
from autopipe.errors import AutopipeError


@pytest.mark.parametrize(("value", "expected"), [("80GiB", 80 * 2**30), ("1.5GB", 1_500_000_000), (1024, 1024),
                                                 ("6e6", 6_000_000), (2.5e9, 2_500_000_000)])
def test_sizes_read(value: str | float, expected: int) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize(("value", "message"), [
    # each raised OverflowError or ValueError from int() until 2026-12-07
    ("1e400", "too large"), (float("inf"), "not a finite number"), (float("nan"), "not a finite number"),
    ("80G", "cannot read size"), (-1, "negative"),
])
def test_what_is_no_size_is_refused_with_a_hint(value: str | float, message: str) -> None:
    with pytest.raises(AutopipeError, match=message) as info:
        parse_size(value)
    assert info.value.hint
