"""Where a size that torch.export could not check was read from a tensor's value.

[Note: sizes read from tensors]
A model that computes a size as a tensor and reads it back (``.item()``, ``int(t)``, a
tensor passed to ``F.pad``) gives torch.export an unbacked symbol (``u0``), and the first
Python check on a shape made from it stops the export with GuardOnDataDependentSymNode at
that check. The check is rarely the cause: Mimi (transformers 5.25.0) keeps its convs'
stride, kernel size and padding as int64 buffers, computes each conv's extra padding from
them as tensors and pads by ``.item()`` of the result (``modeling_mimi.py:378``), and the
export stopped 40 ops later in its transformer, ``is_causal = q_length > 1`` in
``sdpa_attention.py:149``, which the refusal named as the model's line (the sweep of
2026-12-08). torch's error carries the graph traced so far (``partial_fx_graph``, its
source with a ``# File:`` comment above each line's ops); the op that made the
lowest-numbered symbol of the failed check is where the size was read, and the refusal
names that line too. The trace exports with stack traces off ([Note: a quicker export]), so
the graph has no ``# File:`` comments; where a failure names an unbacked symbol, the model
is exported once more with them on to find the line (on the error path only: Mimi's second
export took 2 s).
"""

from __future__ import annotations

import re
from collections.abc import Callable

_SYMBOL = re.compile(r"\bu(\d+)\b")
_MADE = r'^\s*(\w+): "Sym\(u{n}\)" = (torch\.ops\.[\w.]+|[\w.]+)'
_FILE = re.compile(r"^\s*# File: (?P<path>.+?):(?P<line>\d+) in (?P<fn>\w+), code: (?P<code>.*)$")


def unbacked_origin(e: BaseException, again: Callable[[], BaseException | None]) -> str:
    """`` (uN, a size in the failed check, is read from a tensor's value by OP at FILE:LINE in
    FUNCTION: CODE)`` for torch.export's GuardOnDataDependentSymNode ``e``, or "" where the
    error names no unbacked symbol ([Note: sizes read from tensors]). ``again`` exports the
    model once more with stack traces on and returns its error, for the line."""
    found = _origin(e)
    if found and " at " not in found:
        retried = again()
        found = (_origin(retried) if retried is not None else "") or found
    return found


def _origin(e: BaseException) -> str:
    cond, graph = getattr(e, "cond", None), getattr(e, "partial_fx_graph", None)
    if cond is None or not isinstance(graph, str):
        return ""
    numbers = sorted({int(m) for m in _SYMBOL.findall(str(cond))})
    lines = graph.splitlines()
    for n in numbers:
        made = re.compile(_MADE.format(n=n))
        for i, line in enumerate(lines):
            m = made.match(line)
            if m is None:
                continue
            op = m.group(2).removeprefix("torch.ops.")
            where = next((f for f in map(_FILE.match, reversed(lines[:i])) if f is not None), None)
            if where is None:
                return f" (u{n}, a size in the failed check, is read from a tensor's value by {op})"
            path = where["path"].split("site-packages/", 1)[-1]
            return (f" (u{n}, a size in the failed check, is read from a tensor's value by {op} at "
                    f"{path}:{where['line']} in {where['fn']}: {where['code'].strip()[:80]})")
    return ""


HINT = ("a size computed as a tensor and read back (.item(), int(t), a tensor given as F.pad's "
        "padding or a view's shape) cannot be traced: compute it from Python numbers (config "
        "values, .shape) at the line named")
"""What to do where the export stopped on a size read from a tensor's value."""
