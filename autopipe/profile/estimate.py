"""``estimate``: per-node costs from FLOPs and bytes on meta tensors, priced on a DeviceSpec roofline."""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from typing import Any

import torch
import torch.fx as fx

from autopipe._gc import collections_paused
from autopipe._phases import phase
from autopipe._version import __version__
from autopipe.profile._assemble import assemble
from autopipe.profile._attention import fused_sdpa, is_sdpa
from autopipe.profile._copy import module_tensors
from autopipe.profile._cost import CostMode, tf32_flags
from autopipe.profile._masked import index_put_on_meta, is_index_put
from autopipe.profile._node import NodeCall, Op
from autopipe.profile._progress import Progress
from autopipe.profile._queue import Call, queue_seconds, replay_training
from autopipe.profile._reuse import call_key
from autopipe.profile._saved import SavedBytes
from autopipe.profile._setup import setup
from autopipe.profile._walk import NodeCost, NodeWalker
from autopipe.profile.devices import DeviceSpec, load_device_spec
from autopipe.profile.loss import LossFn, estimate_loss
from autopipe.profile.optimizer import estimate_rates
from autopipe.profile.profile import Profile
from autopipe.spec import tensor_target
from autopipe.trace.graph import Graph

_PHASES = ("forward", "backward_input", "backward_weight")


@collections_paused  # [Note: no collections while tracing]
def estimate(
    graph: Graph,
    args: tuple[Any, ...],
    kwargs: dict[str, Any] | None = None,
    *,
    device_spec: str | DeviceSpec = "h100",
    dtype: str | None = None,
    progress: bool | None = None,
    loss_fn: LossFn | None = None,
    target: torch.Tensor | None = None,
) -> Profile:
    """Estimate every node's costs without running anything real.

    The graph runs on meta tensors (a meta copy when the model has real weights).
    Each node's forward, input-gradient and weight-gradient kernels are priced on the
    roofline of ``device_spec`` ([Note: the roofline] in ``_cost.py``) and every aten
    call they make, views included, on the spec's host dispatch time; each node gets
    its share of the launch queue that runs them all ([Note: a node's share of the
    queue] in ``_queue.py``). Attention is priced as the fused GPU kernel ([Note:
    attention on meta tensors]). Activation
    bytes are counted with the same saved-tensor hooks as ``measure``. The input- and
    weight-gradient halves are split as the weight half priced alone says ([Note: one
    backward, priced in halves]). Total FLOPs, bytes, kernels and aten calls per phase
    go to ``profile.meta``.

    Args:
        graph: the traced model (its parameters may live on the meta device).
        args: positional inputs of one micro-batch (meta or real tensors).
        kwargs: keyword inputs of one micro-batch.
        device_spec: a DeviceSpec, a shipped spec name (``h100``, ``a100``, ``h200``) or a JSON path.
        dtype: compute dtype (``fp32``, ``bf16``, ``fp16``); None keeps the model's.
        progress: a progress line on stderr; None shows it when stderr is a terminal.
        loss_fn: with ``target``, the training loss, priced on the model's (meta) output and
            kept as ``profile.loss``.
        target: the target of one micro-batch (real or meta).

    Raises:
        DeviceSpecError: unknown spec, or it has no peak rate for the dtype.
        ProfileError: bad dtype or inputs, or a node that cannot run on meta tensors.
    """
    spec = device_spec if isinstance(device_spec, DeviceSpec) else load_device_spec(device_spec)
    meta_dev = torch.device("meta")
    s = setup(graph, args, kwargs, meta_dev, dtype)
    computing = sum(1 for n in s.gm.graph.nodes if n.op.startswith("call_"))
    bar = Progress(computing, f"estimating {len(graph)} nodes on {spec.name}", enabled=progress)
    walker = _Estimator(s.gm, device=meta_dev, progress=bar, spec=spec)
    with torch.enable_grad(), phase("estimate.nodes"):
        try:
            outs = walker.run(*s.flat)
        finally:
            bar.close()
            walker.saved.release()
    walker.share_queue()
    loss = None
    stand_ins = False
    if loss_fn is not None and target is not None:
        with torch.enable_grad(), phase("estimate.loss"):
            loss, stand_ins = estimate_loss(graph, list(outs), loss_fn, tensor_target(target, "the example"),
                                            walker.seconds)
    meta = {
        "autopipe": __version__, "torch": torch.__version__, "device_spec": spec.to_json(),
        "flops": dict(walker.flops), "bytes_moved": dict(walker.moved), "kernels": dict(walker.kernels),
        "aten_calls": dict(walker.dispatched),
    }
    if stand_ins:  # [Note: a loss that reads values, estimated]
        meta["loss_on"] = "cpu stand-ins"
    profile = assemble(graph, s.gm, walker.costs, walker.output_bytes, device=f"estimate:{spec.name}",
                       dtype=s.dtype, method="estimate", flat_inputs=s.flat, meta=meta)
    return dataclasses.replace(profile, loss=loss, optimizer=estimate_rates(spec, s.dtype),
                               library_bytes=spec.library_bytes)


@dataclasses.dataclass(frozen=True, slots=True)
class _Priced:
    """What pricing a run found: its aten calls, FLOPs, bytes and kernels."""

    calls: tuple[Call, ...]
    """(host seconds, device seconds or None) per aten call, in order."""
    flops: int
    moved: int
    kernels: int
    decomposed: int = 0
    """Kernels the CostMode ran as their decomposition. With none, a run without the
    mode runs the very same kernels (see [Note: reusing the costs of repeated nodes])."""

    @property
    def seconds(self) -> float:
        """The calls' time through an idle launch queue."""
        return queue_seconds(self.calls)

    def less(self, other: _Priced) -> _Priced:
        """These FLOPs, bytes and kernels less ``other``'s (no calls)."""
        return _Priced((), self.flops - other.flops, self.moved - other.moved, self.kernels - other.kernels)


_NOTHING = _Priced((), 0, 0, 0)


@dataclasses.dataclass(frozen=True, slots=True)
class _Known:
    """What a node costs, kept by its key ([Note: reusing the costs of repeated nodes]):
    everything the launch queue and ``profile.meta`` take from it."""

    forward: _Priced
    backward: tuple[Call, ...]
    """The aten calls of the whole backward pass."""
    input_fraction: float
    """The input gradients' share of the backward ([Note: one backward, priced in halves])."""
    backward_input: _Priced
    """FLOPs, bytes and kernels of the input half."""
    backward_weight: _Priced
    """FLOPs, bytes and kernels of the weight half."""


class _Estimator(NodeWalker):
    def __init__(self, gm: fx.GraphModule, *, device: torch.device, progress: Progress,
                 spec: DeviceSpec) -> None:
        super().__init__(gm, device=device, progress=progress)
        self.spec = spec
        self.tf32 = tf32_flags()
        """Read once, so that every price of this estimate (and every reused one) uses the same."""
        self.saved = SavedBytes(exclude=module_tensors(gm))
        self.flops = dict.fromkeys(_PHASES, 0)
        self.moved = dict.fromkeys(_PHASES, 0)
        self.kernels = dict.fromkeys(_PHASES, 0)
        self.dispatched = {"forward": 0, "backward": 0}
        self.calls: dict[str, tuple[tuple[Call, ...], tuple[Call, ...], float]] = {}
        """Per node, the aten calls of its forward and backward, and the input gradients'
        fraction of the backward."""
        self.known: dict[Hashable, _Known] = {}
        """Prices by node key, for nodes that repeat."""

    def op_for(self, n: fx.Node) -> Op:
        if is_sdpa(n):
            return lambda a, k: fused_sdpa(*a, **k)
        if is_index_put(n):  # [Note: masked writes on meta tensors]
            return index_put_on_meta(n)
        return super().op_for(n)

    def _price(self, phase: str, fn: Any) -> _Priced:
        mode = CostMode(self.spec, self.spec.dispatch_s(phase), self.tf32)
        with mode:
            fn()
        return _Priced(tuple(mode.calls), mode.flops, mode.bytes, mode.kernels, mode.decomposed)

    def seconds(self, fn: Any, phase: str) -> float:
        """``fn()`` priced as one ``phase`` (``forward`` or ``backward``) from an idle queue."""
        return self._price(phase, fn).seconds

    def _count(self, phase: str, priced: _Priced) -> None:
        self.flops[phase] += priced.flops
        self.moved[phase] += priced.moved
        self.kernels[phase] += priced.kernels

    def cost(self, call: NodeCall) -> tuple[Any, NodeCost]:
        key = call_key(call.node, call)
        known = self.known.get(key) if key is not None else None
        before = self.saved.total
        box: list[Any] = []
        with self.saved.count():  # on every run: what a node saves depends on earlier nodes
            if known is not None and known.forward.decomposed == 0:
                box.append(call.run())  # the kernels of the priced run, so its price
                fwd = known.forward
            else:
                fwd = self._price("forward", lambda: box.append(call.run()))
        out = box[0]
        activation = self.saved.total - before
        if known is None or known.forward != fwd:
            known = self._backward(call, out, fwd)
            if key is not None:
                self.known[key] = known
        self.calls[call.node.name] = (known.forward.calls, known.backward, known.input_fraction)
        self.dispatched["forward"] += len(known.forward.calls)
        self.dispatched["backward"] += len(known.backward)
        self._count("forward", known.forward)
        self._count("backward_input", known.backward_input)
        self._count("backward_weight", known.backward_weight)
        return out, NodeCost(activation_bytes=activation)  # times: share_queue

    def _backward(self, call: NodeCall, out: Any, fwd: _Priced) -> _Known:
        """The node's price with the calls of its whole backward and the input gradients' fraction of it.

        [Note: one backward, priced in halves]
        Zero-bubble schedules run the input- and weight-gradient halves apart, but the
        model's backward runs both in one pass, which dispatches 20–27% fewer aten
        calls than the two halves priced apart (views and shared work done once: GPT-2
        medium 1,842 against 2,233). The whole pass is what goes through the launch
        queue. The weight half is priced alone (as zero-bubble schedules run it), the
        input half is the rest, and the node's share is split between them so; FLOPs,
        bytes and kernels of the input half in ``profile.meta`` are the whole pass's
        less the weight half's.
        """
        every = call.backward(out, "all")
        if every is None:
            return _Known(fwd, (), 0.0, _NOTHING, _NOTHING)
        whole = self._price("backward_input", every)
        if call.backward(out, "input") is None:  # weight gradients only
            return _Known(fwd, whole.calls, 0.0, _NOTHING, whole.less(_NOTHING))
        weights = call.backward(out, "weight")
        if weights is None:
            return _Known(fwd, whole.calls, 1.0, whole.less(_NOTHING), _NOTHING)
        wgt = self._price("backward_weight", weights)
        total = whole.seconds
        fraction = min(1.0, max(0.0, 1.0 - wgt.seconds / total)) if total > 0 else 1.0
        return _Known(fwd, whole.calls, fraction, whole.less(wgt), wgt.less(_NOTHING))

    def share_queue(self) -> None:
        """Give every node its share of the launch queue ([Note: a node's share of the queue]),
        its backward split between the halves ([Note: one backward, priced in halves])."""
        names = list(self.calls)
        shares = replay_training([self.calls[n][:2] for n in names])
        for name, (f, b) in zip(names, shares):
            x = self.calls[name][2]
            self.costs[name] = dataclasses.replace(self.costs[name], forward_s=f, backward_input_s=b * x,
                                                   backward_weight_s=b * (1 - x))
