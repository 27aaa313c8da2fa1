"""Keep a pinned CPU rank's core busy while the rank posts and waits on its peers' messages.

# [Note: a busy core while a rank waits]
A CPU rank posts its sends and receives and then blocks until its peers' messages
have come (torch's schedules: ``_batch_p2p``, ``_wait_batch_p2p``). On the 2-core VM
this was measured on, with each rank held to its own core ([Note: pinned cores on CPU
ranks]), the blocking cost more than the messages did. In Llama's (the example)
1F1B step on 2 gloo ranks, 24 steps timed call by call (2026-12-03):

- posting the last stage's sends and receives after each backward took 2–8 ms of
  wall time for 0.02 ms of CPU time: the thread slept inside gloo's ``writev`` of a
  16-byte "ready to receive" notice, 5–9 ms a step in all;
- replaying each step's own measured forwards, backwards, loss and hops gave 6–11 ms
  less than the step took.

With a second thread of the rank calling ``sched_yield`` in a loop while the rank posts
and waits (so its core never idles), posting took 1.2–2.7 ms a step and the step's
median 93.6–103.1 ms against 96.4–110.3 without, in five pairs of runs taken in turns. A thread that spins only while the rank blocks costs the rank's own compute
nothing; the core is the rank's alone. (Not kept, same runs: gloo's threads on the
other rank's core removed the slow posts but not the gap; a ``SCHED_IDLE`` process
spinning on each core did neither.) The MLP example's steps were the same either way.

So ``build`` starts a ``BusyCore`` on CPU ranks whose cores are pinned (never where
ranks share cores: there the spinning would take their compute), and ``Pipe.step``
runs torch's posting and waiting inside it.

The MLP example's steps (6.2 ms at best) stayed slow in many runs: 16–83% of a run's
steps took 1.4, 2.5, 4 or 5.5 ms more (2026-12-04, 300-step runs). In those steps the
last rank's posts took 2–5.5 ms of wall time where they take 0.1, and the first rank waited
for them; which steps were slow did not repeat from run to run (the same batches), so
not the data. A ``sched_yield`` of the rank's own thread just before it posts (inside
the busy spell, ``messages_within``) took that away: 5 runs of each in turns, median steps
6.56–6.62 ms against 6.69–6.99 without, steps over 1.15 × the best 9% against 29%; an
earlier set of 4 against 4, 6.53–6.80 against 6.69–10.47. (A 3 µs spin in Python before
posting did about half as well, 6.76–8.07.) The reading that fits: a message that came
while the rank computed woke gloo's thread on the rank's core, where it waits for its
turn, and the rank's post then waits on that thread's lock or socket; yielding first
lets gloo's thread run, and the post goes through.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator


class BusyCore:
    """A daemon thread that keeps this thread's cores busy (``sched_yield`` in a loop)
    inside ``busy()``, and sleeps outside it. It inherits the cores of the thread that
    makes it. ``close`` ends it."""

    def __init__(self) -> None:
        self._on = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._spin, name="autopipe-busy-core", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._closed:
            self._on.wait()
            while self._on.is_set() and not self._closed:
                os.sched_yield()

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """Spin while the body runs."""
        self._on.set()
        try:
            yield
        finally:
            self._on.clear()

    @property
    def alive(self) -> bool:
        """Whether the spinning thread still runs."""
        return self._thread.is_alive()

    def close(self) -> None:
        """End the thread (idempotent)."""
        self._closed = True
        self._on.set()
        self._thread.join()
        self._on.clear()
