"""What a cut sends each micro-batch: the messages and bytes forward, and of the gradients back."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# [Note: what a cut sends]
#
# The runtime sends the values that cross a cut as messages ([Note: one message per cut] in
# ``autopipe.runtime.packing``), and the plan prices them so:
#
# - the values with a gradient travel as one message, whatever their dtypes, and the values
#   without one ([Note: values without a gradient] in ``autopipe.trace.no_grad``) that are
#   small (``Config.join_bytes``) travel in it: their zeros come back with the gradients,
#   one message back;
# - the large values without one (``Send.forward_only``) travel in a message of their own,
#   forward only: one more latency forward, none of their bytes back;
# - where no value with a gradient crosses, every value travels in one message, forward
#   only: nothing comes back.
#
# So a cut's forward is all its bytes and one latency per message; its way back, where a
# value with a gradient crosses, one latency and the bytes of what does not go forward only,
# and elsewhere nothing (until 2026-12-06 the small values' bytes were counted back there
# too). Where it errs high: where the trace cannot tell that a value has no gradient (it is
# counted as having one). Where it errs low: by the padding of a value of another dtype
# than its message's (at most 15 bytes each, not counted). The messages are 0/1 indicators
# of what crosses, so the ILP encodes the rule exactly.


@dataclass(frozen=True, slots=True)
class Traffic:
    """One cut's messages and bytes per micro-batch, each way ([Note: what a cut sends])."""

    forward_bytes: int
    forward_messages: int
    """One, two where a value that goes forward only crosses next to one with a gradient."""
    back_bytes: int
    """What does not go forward only, where a value with a gradient crosses; else none."""
    back_messages: int = 1
    """One where a value with a gradient crosses, else none."""


def cut_traffic(values: Iterable[tuple[int, bool, bool]]) -> Traffic:
    """The traffic of a cut crossed by ``values``, each (bytes, whether it goes forward
    only: ``Send.forward_only``, whether it may have a gradient)."""
    forward = back = 0
    alone = gradient = False
    for nbytes, forward_only, has_gradient in values:
        forward += nbytes
        if forward_only and nbytes > 0:
            alone = True
        else:
            back += nbytes
            gradient |= has_gradient and nbytes > 0
    return Traffic(forward_bytes=forward, forward_messages=2 if gradient and alone else 1,
                   back_bytes=back if gradient else 0, back_messages=1 if gradient else 0)
