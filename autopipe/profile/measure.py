"""``measure``: per-node forward, input-gradient and weight-gradient times and saved bytes, on real tensors."""

from __future__ import annotations

import dataclasses
import os
import platform
from typing import Any

import torch
import torch.fx as fx

from autopipe._malloc import pin_malloc as _pin_malloc
from autopipe._version import __version__
from autopipe.errors import ProfileError
from autopipe.profile._assemble import assemble
from autopipe.profile._copy import fresh_inputs, module_tensors
from autopipe.profile._node import NodeCall
from autopipe.profile._progress import Progress
from autopipe.profile._saved import SavedBytes
from autopipe.profile._scratch import counters_for, with_scratch
from autopipe.profile._setup import (
    check_counts,
    cpu_threads,
    denormals_flushed,
    resolve_device,
    setup,
)
from autopipe.profile._timer import Timer
from autopipe.profile._walk import NodeCost, NodeWalker
from autopipe.profile.libraries import library_bytes
from autopipe.profile.loss import LossFn, measure_loss
from autopipe.profile.optimizer import measure_rates
from autopipe.profile.profile import Profile
from autopipe.profile.whole import run_whole
from autopipe.spec import tensor_target
from autopipe.trace._state import buffers_restored
from autopipe.trace.graph import Graph


def measure(
    graph: Graph,
    args: tuple[Any, ...],
    kwargs: dict[str, Any] | None = None,
    *,
    device: str = "cpu",
    dtype: str | None = None,
    warmup: int = 2,
    repeats: int = 5,
    threads: int | None = 1,
    progress: bool | None = None,
    clock: str = "auto",
    pin_malloc: bool = True,
    loss_fn: LossFn | None = None,
    target: torch.Tensor | None = None,
) -> Profile:
    """Measure every node of ``graph`` on one micro-batch ``(args, kwargs)``.

    Each node runs alone on the real outputs of the nodes before it (see
    [Note: per-node autograd] in ``_node.py``): ``warmup`` untimed and ``repeats``
    timed runs of its forward, of the gradient w.r.t. its inputs and of the gradient
    w.r.t. its parameters; medians are kept. The backward time is the median of the
    joint backward, split between inputs and weights in proportion to the two
    separately timed halves. ``activation_bytes`` counts what autograd saves, per
    [Note: attributing saved tensors to nodes] in ``_saved.py``. On CUDA ``scratch_bytes``
    is what the node's forward or backward took and handed back before returning, read
    from the caching allocator's counters around one more call of each ([Note: a call's
    scratch] in ``_scratch.py``). A whole-model
    forward+backward of the same micro-batch is timed too and stored in
    ``profile.meta["whole_model"]`` (with ``peak_bytes`` from
    ``torch.cuda.max_memory_allocated`` on CUDA), so that the per-node sum can be
    checked against it. On CUDA the libraries' workspaces are measured apart
    (``Profile.library_bytes``, [Note: the libraries' workspaces] in ``libraries.py``).

    A node that writes an input in place gets fresh copies of it for every extra run and
    writes the real value once, so later nodes see what one forward makes ([Note: in-place
    writes while profiling] in ``_mutation.py``); the whole-model runs each get their own
    copies of the inputs. The user's model and example are not changed: another device or
    dtype runs on a copy, batch-norm statistics are restored, and gradients are returned,
    never accumulated in ``.grad``.

    Args:
        graph: the traced model.
        args: positional inputs of one micro-batch.
        kwargs: keyword inputs of one micro-batch.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        dtype: compute dtype (``fp32``, ``bf16``, ``fp16``); None keeps the model's.
        warmup: untimed runs before timing each piece.
        repeats: timed runs of each piece; the median is reported.
        threads: CPU intra-op threads while profiling (1 gives stable numbers); None
            leaves torch's setting.
        progress: a progress line on stderr; None shows it when stderr is a terminal.
        clock: CPU clock ([Note: CPU clocks] in ``_timer.py``): ``auto`` (the compute
            thread's CPU time with one thread, else ``time.perf_counter``), ``wall``
            or ``thread``. CUDA always uses events.
        pin_malloc: on the CPU, pin glibc's malloc thresholds in this process first, as
            ``autopipe train`` does in its CPU ranks ([Note: pinned malloc on CPU ranks]
            in ``autopipe._malloc``), so nodes are timed under the allocator they train
            under (without it a node sum / whole-model ratio read 0.71 where pinned
            read 0.86). It stays pinned for the process. ``meta["malloc_pinned"]`` says
            whether it is.
        loss_fn: with ``target``, the training loss ``loss_fn(output, target)``: timed on
            the model's output for one micro-batch and kept as ``profile.loss`` (the
            planner charges it to the last stage).
        target: the target of one micro-batch.

    Raises:
        ProfileError: bad device, dtype, counts or inputs, or a node that fails to run.
    """
    if device == "meta" or str(device).startswith("meta"):
        raise ProfileError("measure cannot time meta tensors",
                           hint="use autopipe.profile.estimate (CLI: --device meta --device-spec h100)")
    check_counts(warmup, repeats, clock)
    if any(t.device.type == "meta" for t in module_tensors(graph.gm)):
        raise ProfileError("the model's weights are on the meta device (built with device=meta?): "
                           "there is nothing to measure",
                           hint="estimate it (autopipe.plan(..., profile=\"estimate\"); "
                                "autopipe profile --device meta; autopipe plan --device-spec h100), "
                                "or build it with weights")
    dev = resolve_device(device)
    pinned = dev.type == "cpu" and pin_malloc and _pin_malloc()
    s = setup(graph, args, kwargs, dev, dtype)
    libraries = library_bytes(dev, s.dtype)  # [Note: the libraries' workspaces]
    computing = sum(1 for n in s.gm.graph.nodes if n.op.startswith("call_"))
    bar = Progress(computing, f"measuring {len(graph)} nodes on {dev}", enabled=progress)
    with cpu_threads(threads, dev), denormals_flushed(dev) as flushed, buffers_restored(s.gm), \
            torch.enable_grad():
        timer = Timer(dev, warmup=warmup, repeats=repeats, clock=clock)
        walker = _Measurer(s.gm, device=dev, progress=bar, timer=timer)
        try:
            walker.run(*fresh_inputs(s.flat))
        finally:
            bar.close()
            walker.saved.release()
        whole = run_whole(s.gm, s.flat, timer)
        loss = None
        if loss_fn is not None and target is not None:
            loss = measure_loss(graph, s.gm, s.flat, loss_fn, tensor_target(target, "the example").to(dev), timer)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or platform.machine())
    meta = {
        "autopipe": __version__, "torch": torch.__version__, "device_name": name,
        "warmup": warmup, "repeats": repeats, "clock": timer.clock,
        "threads": torch.get_num_threads() if threads is None else threads,
        "timer_overhead_s": timer.overhead, "grad_call_overhead_s": walker.grad_overhead,
        "malloc_pinned": pinned, "flush_denormal": flushed, "cpu_affinity": _cpus(),
        "whole_model": whole.to_json(),
    }
    label = f"cuda:{name}" if dev.type == "cuda" else "cpu"
    profile = assemble(graph, s.gm, walker.costs, walker.output_bytes, device=label, dtype=s.dtype,
                       method="measure", flat_inputs=s.flat, meta=meta)
    with cpu_threads(threads, dev), denormals_flushed(dev):
        rates = measure_rates(dev, s.dtype)
    return dataclasses.replace(profile, loss=loss, optimizer=rates, library_bytes=libraries)


def _cpus() -> int | None:
    """CPUs this process may run on (what a training rank would be pinned within)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


class _Measurer(NodeWalker):
    def __init__(self, gm: fx.GraphModule, *, device: torch.device, progress: Progress,
                 timer: Timer) -> None:
        super().__init__(gm, device=device, progress=progress)
        self.timer = timer
        self.saved = SavedBytes(exclude=module_tensors(gm))
        self.grad_overhead = _grad_call_overhead(timer)
        self.counters = counters_for(device)

    def cost(self, call: NodeCall) -> tuple[Any, NodeCost]:
        forward_s = self.timer.median(call.forward, before=call.fresh)
        before = self.saved.total
        with self.saved.count():
            if self.counters is None:
                out, scratch = call.run(), 0
            else:
                out, scratch = with_scratch(self.counters, call.run)
        activation = self.saved.total - before
        bi, bw = self._backward(call, out)
        if self.counters is not None:
            both = call.backward(out, "all")
            if both is not None:  # once more, its gradients held until it returns
                scratch = max(scratch, with_scratch(self.counters, both)[1])
        self.timer.sync()
        return out, NodeCost(forward_s=forward_s, backward_input_s=bi, backward_weight_s=bw,
                             activation_bytes=activation, scratch_bytes=scratch)

    def _time_grad(self, fn: Any) -> float:
        return max(self.timer.median(fn) - self.grad_overhead, 0.0)

    def _backward(self, call: NodeCall, out: Any) -> tuple[float, float]:
        both = call.backward(out, "all")
        if both is None:
            return 0.0, 0.0
        total = self._time_grad(both)
        if not call.params:
            return total, 0.0
        if not call.inputs:
            return 0.0, total
        inp = call.backward(out, "input")
        wgt = call.backward(out, "weight")
        assert inp is not None and wgt is not None
        ti = self._time_grad(inp)
        tw = self._time_grad(wgt)
        if ti + tw <= 0:
            return total / 2, total / 2
        return total * ti / (ti + tw), total * tw / (ti + tw)


def _grad_call_overhead(timer: Timer) -> float:
    """Seconds one ``torch.autograd.grad`` call costs on a graph that does nothing.

    [Note: per-call overhead]
    A whole-model backward starts the autograd engine once; profiling node by node
    starts it once per node and per half. That fixed cost (~15 µs on CPU) is timed
    here on a one-element view and taken off every per-node backward time, as a
    timer's own overhead is, so that small nodes are not charged for the profiler.
    """
    x = torch.zeros(1, device=timer.device, requires_grad=True)
    y = x.view_as(x)
    g = torch.ones_like(y)
    return timer.median(lambda: torch.autograd.grad([y], [x], [g], retain_graph=True),
                        warmup=10, repeats=101)
