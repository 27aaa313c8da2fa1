"""Lists of stage or part indices written out in notes."""

from __future__ import annotations

from collections.abc import Sequence


def indices(word: str, items: Sequence[int]) -> str:
    """``stage 2``, ``stages 0 and 3``, ``parts 0, 1 and 2``: ``word`` and ``items`` in words."""
    if len(items) == 1:
        return f"{word} {items[0]}"
    return f"{word}s " + ", ".join(map(str, items[:-1])) + f" and {items[-1]}"
