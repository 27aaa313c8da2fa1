"""``torch.distributions`` built inside ``forward``, under ``torch.export``.

[Note: distributions built inside forward]
GroupViT's grouping blocks draw Gumbel noise in every forward through
``torch.distributions.Gumbel(torch.full((), 0.0), torch.full((), 1.0))``. A distribution
checks its arguments when it is built (and a value's support in ``log_prob``) with a Python
branch on tensor values, ``if not constraint.check(value).all(): raise ValueError``, which
``torch.export`` cannot trace ("Could not guard on data-dependent expression"): the model
could not be traced at all.

While tracing, distributions are therefore built without those checks
(``Distribution.set_default_validate_args(False)``, restored afterwards; one built with
``validate_args=True`` still checks, and still cannot be traced). The graph computes what
eager PyTorch computes for valid arguments; for invalid ones it no longer raises: a scale
that a network makes negative gives NaN in the step where eager PyTorch would have stopped.
Draws from a distribution are ordinary random ops (``torch.rand`` and the like), drawn per
node, step and micro-batch as any other ([Note: random draws per node and micro-batch] in
``autopipe.runtime.draws``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch.distributions import Distribution


@contextlib.contextmanager
def distribution_checks_off() -> Iterator[None]:
    """Within this block, distributions built with the default ``validate_args`` skip their checks."""
    before = Distribution._validate_args
    Distribution.set_default_validate_args(False)
    try:
        yield
    finally:
        Distribution.set_default_validate_args(before)
