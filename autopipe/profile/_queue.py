"""The launch queue: a host that issues aten calls one after another, a GPU that runs their kernels in order.

[Note: the launch queue]
In eager PyTorch the host dispatches every aten call (Python, the dispatcher,
autograd's bookkeeping, the launch), views and metadata ops included, and the GPU
runs the kernels in the order they were launched. A kernel starts once the host has
issued it and the GPU has finished the kernel before; the host never waits for the
GPU. With host cost ``h`` per call and device time ``d_k`` per kernel (max-plus)::

    host    |h1|h2|h3|h4|h5|h6|...          issued at H_k = Σ_{j≤k} h_j
    device     [ d1 ]   [d3]   [   d5   ]   starts at max(H_k, end of the kernel before)
               call 2 and 4 are views: no kernel

    time = max(H_last, end of the last kernel)

A chain of small kernels is host-bound (time ≈ Σ h), a chain of large ones
device-bound (≈ Σ d), and neither a plain sum nor the roofline alone gets a mix right.
On an H200 host, ``h`` was 18.6 µs per call forward (with autograd recording) and
14.4 µs backward (``profiles/h200/suite/summary.json``, ``meta.dispatch``); a bf16
GPT-2 medium issues 3,224 calls per forward+backward, so the host, not the H200,
sets its time.

[Note: a node's share of the queue]
``replay`` runs all nodes' calls through one queue, in the order the model runs them
(forward in the walk's order, backward in reverse, each phase from an idle queue as
the pipeline runs them as separate actions), and charges each node the amount by
which it moved the queue's finish time, ``max(host, device)``. The shares telescope:
the nodes of a phase sum exactly to that phase's queue time for the whole model.
A stage is charged the sum of its nodes' shares; run alone from an idle queue it
would differ only by the backlog the queue carried into its first node (the host's
head start over a busy GPU), at most a few calls' worth where the model is
host-bound and hidden under the GPU's work where it is device-bound.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

Call = tuple[float, float | None]
"""One aten call: (host seconds to issue it, device seconds of its kernel; None when it has none)."""


class LaunchQueue:
    """The host and GPU clocks of [Note: the launch queue], both starting idle at 0."""

    __slots__ = ("device", "host")

    def __init__(self) -> None:
        self.host = 0.0
        """When the host has issued everything so far."""
        self.device = 0.0
        """When the GPU finishes the last kernel issued so far."""

    @property
    def done(self) -> float:
        """When everything issued so far has finished."""
        return max(self.host, self.device)

    def issue(self, host_s: float, device_s: float | None) -> None:
        """The host spends ``host_s`` on a call; its kernel (if any) runs ``device_s`` once
        both the call is issued and the GPU is free."""
        self.host += host_s
        if device_s is not None:
            self.device = max(self.device, self.host) + device_s

    def run(self, calls: Iterable[Call]) -> float:
        """Issue ``calls`` in order; returns how far they moved ``done``."""
        before = self.done
        for host_s, device_s in calls:
            self.issue(host_s, device_s)
        return self.done - before


def queue_seconds(calls: Iterable[Call]) -> float:
    """Time of ``calls`` from an idle queue."""
    return LaunchQueue().run(calls)


def replay(segments: Sequence[Sequence[Call]]) -> list[float]:
    """Each segment's share of one queue that runs them all in order
    ([Note: a node's share of the queue]); the shares sum to the queue's time."""
    queue = LaunchQueue()
    return [queue.run(calls) for calls in segments]



def replay_training(nodes: Sequence[tuple[Sequence[Call], Sequence[Call]]]) -> list[tuple[float, float]]:
    """Per node, its (forward, backward) share of a training step's queue.

    ``nodes`` are in forward order, each with the calls of its forward and of its
    backward. The forward runs them in order from an idle queue, the backward in
    reverse order (the autograd engine's) from another ([Note: a node's share of the
    queue]).
    """
    forward = replay([f for f, _ in nodes])
    backward = replay([b for _, b in reversed(nodes)])
    return list(zip(forward, reversed(backward)))
