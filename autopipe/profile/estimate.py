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
from autopipe.profile._cost import CostMode
from autopipe.profile._node import NodeCall, Op
from autopipe.profile._progress import Progress
from autopipe.profile._reuse import call_key
from autopipe.profile._saved import SavedBytes
from autopipe.profile._setup import setup
from autopipe.profile._walk import NodeCost, NodeWalker
from autopipe.profile.devices import DeviceSpec, load_device_spec
from autopipe.profile.loss import LossFn, estimate_loss
from autopipe.profile.optimizer import estimate_rates
from autopipe.profile.profile import Profile
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
    roofline of ``device_spec`` ([Note: the roofline] in ``_cost.py``); attention is
    priced as the fused GPU kernel ([Note: attention on meta tensors]). Activation
    bytes are counted with the same saved-tensor hooks as ``measure``. The input- and
    weight-gradient halves are priced as separate passes (as zero-bubble schedules run
    them). Total FLOPs, bytes and kernels per phase go to ``profile.meta``.

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
    loss = None
    if loss_fn is not None and target is not None:
        with torch.enable_grad(), phase("estimate.loss"):
            loss = estimate_loss(graph, list(outs), loss_fn, target, lambda fn: _seconds(spec, fn))
    meta = {
        "autopipe": __version__, "torch": torch.__version__, "device_spec": spec.to_json(),
        "flops": dict(walker.flops), "bytes_moved": dict(walker.moved), "kernels": dict(walker.kernels),
    }
    profile = assemble(graph, s.gm, walker.costs, walker.output_bytes, device=f"estimate:{spec.name}",
                       dtype=s.dtype, method="estimate", flat_inputs=s.flat, meta=meta)
    return dataclasses.replace(profile, loss=loss, optimizer=estimate_rates(spec, s.dtype))


def _seconds(spec: DeviceSpec, fn: Any) -> float:
    """``fn()`` priced on ``spec``'s roofline."""
    mode = CostMode(spec)
    with mode:
        fn()
    return float(mode.seconds)


@dataclasses.dataclass(frozen=True, slots=True)
class _Priced:
    """What pricing a run found: seconds, FLOPs, bytes and kernels."""

    seconds: float
    flops: int
    moved: int
    kernels: int
    decomposed: int = 0
    """Kernels the CostMode ran as their decomposition. With none, a run without the
    mode runs the very same kernels (see [Note: reusing the costs of repeated nodes])."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Known:
    """The prices of a node key ([Note: reusing the costs of repeated nodes])."""

    forward: _Priced
    backward_input: _Priced
    backward_weight: _Priced


class _Estimator(NodeWalker):
    def __init__(self, gm: fx.GraphModule, *, device: torch.device, progress: Progress,
                 spec: DeviceSpec) -> None:
        super().__init__(gm, device=device, progress=progress)
        self.spec = spec
        self.saved = SavedBytes(exclude=module_tensors(gm))
        self.flops = dict.fromkeys(_PHASES, 0)
        self.moved = dict.fromkeys(_PHASES, 0)
        self.kernels = dict.fromkeys(_PHASES, 0)
        self.known: dict[Hashable, _Known] = {}
        """Prices by node key, for nodes that repeat."""

    def op_for(self, n: fx.Node) -> Op:
        if is_sdpa(n):
            return lambda a, k: fused_sdpa(*a, **k)
        return super().op_for(n)

    def _price(self, fn: Any) -> _Priced:
        mode = CostMode(self.spec)
        if fn is not None:
            with mode:
                fn()
        return _Priced(mode.seconds, mode.flops, mode.bytes, mode.kernels, mode.decomposed)

    def _count(self, phase: str, priced: _Priced) -> float:
        self.flops[phase] += priced.flops
        self.moved[phase] += priced.moved
        self.kernels[phase] += priced.kernels
        return priced.seconds

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
                fwd = self._price(lambda: box.append(call.run()))
        out = box[0]
        activation = self.saved.total - before
        if known is None or known.forward != fwd:
            inp, wgt = self._backward(call, out)
            known = _Known(forward=fwd, backward_input=inp, backward_weight=wgt)
            if key is not None:
                self.known[key] = known
        return out, NodeCost(forward_s=self._count("forward", fwd),
                             backward_input_s=self._count("backward_input", known.backward_input),
                             backward_weight_s=self._count("backward_weight", known.backward_weight),
                             activation_bytes=activation)

    def _backward(self, call: NodeCall, out: Any) -> tuple[_Priced, _Priced]:
        if call.backward(out, "all") is None:
            return _NOTHING, _NOTHING
        return self._price(call.backward(out, "input")), self._price(call.backward(out, "weight"))


_NOTHING = _Priced(0.0, 0, 0, 0)
