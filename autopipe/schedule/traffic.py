"""What a cut sends each micro-batch: the messages and bytes forward, and of the gradients back."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# [Note: what a cut sends]
#
# The runtime sends the values that cross a cut as messages ([Note: one message per cut] in
# ``autopipe.runtime.packing``), and the plan prices them so:
#
# - the values with a gradient travel as one message, and so do the values without one
#   ([Note: values without a gradient] in ``autopipe.trace.no_grad``) that are small
#   (``Config.join_bytes``): their zeros come back with the gradients, one message back;
# - the large values without one (``Send.forward_only``) travel in a second message,
#   forward only: one more latency forward, none of their bytes back.
#
# So a cut's forward is all its bytes and one latency, two where a value that goes forward
# only crosses; its way back is the bytes of its values that do not and one latency. The
# rule is linear in what crosses, so the ILP encodes it exactly. Where it errs, it errs
# high, and only at cuts no value with a gradient crosses (a first stage of input
# processing alone, with no parameter): the runtime then sends all in one message and
# nothing back. A second dtype with a gradient makes a second message too; that is not
# priced either.


@dataclass(frozen=True, slots=True)
class Traffic:
    """One cut's messages and bytes per micro-batch, each way ([Note: what a cut sends])."""

    forward_bytes: int
    forward_messages: int
    """One, or two where a value that goes forward only crosses (one message comes back)."""
    back_bytes: int


def cut_traffic(values: Iterable[tuple[int, bool]]) -> Traffic:
    """The traffic of a cut crossed by ``values``, each (bytes, whether it goes forward
    only: ``Send.forward_only``)."""
    forward = back = 0
    alone = False
    for nbytes, forward_only in values:
        forward += nbytes
        if forward_only and nbytes > 0:
            alone = True
        else:
            back += nbytes
    return Traffic(forward_bytes=forward, forward_messages=2 if alone else 1, back_bytes=back)
