"""What a cut sends each micro-batch: the messages and bytes forward, and of the gradients back."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# [Note: what a cut sends]
#
# The runtime sends the values that cross a cut as messages ([Note: one message per cut] in
# ``autopipe.runtime.packing``), and the plan prices them so:
#
# - the values with a gradient travel as one message per dtype, and the values without one
#   ([Note: values without a gradient] in ``autopipe.trace.no_grad``) that are small
#   (``Config.join_bytes``) travel in the first of them: their zeros come back with the
#   gradients, one message back per dtype (torch posts a gradient's receive for each
#   message that has one);
# - the large values without one (``Send.forward_only``) travel in a message of their own,
#   forward only: one more latency forward, none of their bytes back;
# - where no value with a gradient crosses, every value travels in one message, forward
#   only: nothing comes back.
#
# So a cut's forward is all its bytes and one latency per message; its way back is one
# latency per dtype with a gradient and the bytes of what does not go forward only. Where it
# errs, it errs high: by the bytes of the small values without a gradient at a cut no value
# with one crosses (counted back, though nothing comes back there), and where the trace
# cannot tell that a value has no gradient (it is counted as having one, in its dtype's
# message). The messages are a count of the dtypes whose values cross, linear in
# indicators, so the ILP encodes the rule exactly.


@dataclass(frozen=True, slots=True)
class Traffic:
    """One cut's messages and bytes per micro-batch, each way ([Note: what a cut sends])."""

    forward_bytes: int
    forward_messages: int
    """One per dtype with a gradient, one more where a value that goes forward only crosses;
    one where no value with a gradient crosses."""
    back_bytes: int
    back_messages: int = 1
    """One per dtype with a gradient: none where no value with a gradient crosses."""


def cut_traffic(values: Iterable[tuple[int, bool, str | None]]) -> Traffic:
    """The traffic of a cut crossed by ``values``, each (bytes, whether it goes forward
    only: ``Send.forward_only``, the dtype of its gradient's message: None where it has
    none)."""
    forward = back = 0
    alone = False
    gradients: set[str] = set()
    for nbytes, forward_only, gradient in values:
        forward += nbytes
        if forward_only and nbytes > 0:
            alone = True
        else:
            back += nbytes
        if gradient is not None and not forward_only and nbytes > 0:
            gradients.add(gradient)
    messages = len(gradients) + (1 if alone else 0) if gradients else 1
    return Traffic(forward_bytes=forward, forward_messages=messages, back_bytes=back,
                   back_messages=len(gradients))
