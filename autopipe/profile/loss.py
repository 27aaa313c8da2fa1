"""The loss as a cost of its own: ``loss_fn`` on the model's output, forward, backward and saved bytes.

[Note: the loss is part of the last stage]
The runtime computes the loss on the last stage, once per micro-batch, after its
forward; its backward starts that stage's backward. For a large vocabulary it is no
small part of the step (a cross-entropy over 128 × 32,768 logits took 21 ms a
micro-batch on this CPU, more than the head before it), so a profile carries it and
the planner charges it to the stage that holds the model's output.

That stage may hold nothing else: the planner counts the loss as work of its own, so
where it outweighs a stage's share, the last stage receives the logits and runs the loss
alone (Megatron-LM's layouts name the loss as a layer too). The ILP and the chain DP may
choose that; the uniform and parameter splits, which cut between layers, never do.
Until 2026-12-06 only the ILP could, and only where the trace left a dead node (an
unused ``arange`` of HF's mask code) to stand beside the loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.fx as fx

from autopipe.errors import AutopipeError, ProfileError
from autopipe.profile._peak import PeakBytes
from autopipe.profile._saved import SavedBytes
from autopipe.profile._timer import Timer
from autopipe.profile._values import reads_values
from autopipe.profile._walk import first_line
from autopipe.spec import scalar_loss
from autopipe.trace.graph import Graph

LossFn = Callable[[Any, torch.Tensor], torch.Tensor]


@dataclass(frozen=True, slots=True, kw_only=True)
class LossCost:
    """The loss on one micro-batch's output."""

    forward_s: float
    """The loss function's forward, seconds."""
    backward_s: float
    """Its backward down to the model's output, seconds."""
    activation_bytes: int
    """Bytes it saves for its backward (the softmax of a cross-entropy, say)."""
    input_bytes: int
    """Bytes of the model output it reads."""
    peak_bytes: int = 0
    """The most bytes its forward and backward hold at once, its input not counted: what it
    saves, the gradients it makes (its input's included), its scratch (``PeakBytes``).
    0 where unknown (profiles written before it was counted)."""
    target_bytes: int = 0
    """Bytes of one micro-batch's target: the last stage's rank holds the batch's, one per
    micro-batch ([Note: the batch a rank holds] in ``autopipe.partition.costs``). 0 where
    unknown (profiles written before it was counted)."""

    @property
    def workspace_bytes(self) -> int:
        """What the last stage holds for the loss while it runs, beyond the saved bytes it is
        charged per micro-batch in flight: the model's output it reads and the loss's peak
        above what it saves (0 where ``peak_bytes`` is unknown)."""
        if not self.peak_bytes:
            return 0
        return self.input_bytes + max(0, self.peak_bytes - self.activation_bytes)

    def to_json(self) -> dict[str, Any]:
        """A plain dict."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LossCost:
        """Inverse of ``to_json``."""
        return cls(forward_s=float(data["forward_s"]), backward_s=float(data["backward_s"]),
                   activation_bytes=int(data["activation_bytes"]), input_bytes=int(data["input_bytes"]),
                   peak_bytes=int(data.get("peak_bytes", 0)), target_bytes=int(data.get("target_bytes", 0)))


def _outputs(gm: fx.GraphModule, flat: list[Any]) -> list[Any]:
    with torch.no_grad():
        return list(gm(*flat))


def _call(loss_fn: LossFn, outs: list[Any], graph: Graph, target: torch.Tensor) -> torch.Tensor:
    """``loss_fn`` on fresh leaves of the flat outputs ``outs``, as the model returns them:
    a scalar that autograd can differentiate.

    Raises:
        ProfileError: it fails, naming the device it ran on (meta when estimating).
        SpecError: it returns anything else (``scalar_loss``).
    """
    leaves = _leaves(outs)
    device = next((o.device for o in outs if isinstance(o, torch.Tensor)), torch.device("cpu"))
    try:
        loss = loss_fn(graph.unflatten_output(leaves), target)
    except AutopipeError:
        raise
    except Exception as e:
        hint = "check that loss_fn(output, target) runs on the model's output and batch(1)'s target"
        if device.type == "meta":
            hint += ("; an estimate runs it on meta tensors, so each tensor it makes must be on its "
                     "input's device (torch.arange(n, device=logits.device)); one that reads values "
                     "(.item(), float()) runs again on CPU stand-ins of the output; or measure on a "
                     "real device instead")
        raise ProfileError(f"loss_fn failed on the model's output ({device} tensors): "
                           f"{type(e).__name__}: {first_line(e)}", hint=hint) from e
    return scalar_loss(loss)


def _leaves(outs: list[Any]) -> list[Any]:
    return [o.detach().requires_grad_(o.is_floating_point()) if isinstance(o, torch.Tensor) else o
            for o in outs]


def _input_bytes(outs: list[Any]) -> int:
    return sum(o.numel() * o.element_size() for o in outs if isinstance(o, torch.Tensor))


def measure_loss(graph: Graph, gm: fx.GraphModule, flat: list[Any], loss_fn: LossFn,
                 target: torch.Tensor, timer: Timer) -> LossCost:
    """Time ``loss_fn`` on the output of ``gm`` (the profiled copy) for ``target``.

    Each run gets fresh leaves of the output, as the last stage's loss does.
    """
    outs = _outputs(gm, flat)

    def forward() -> torch.Tensor:
        loss = _call(loss_fn, outs, graph, target)
        return loss

    def both() -> None:
        torch.autograd.backward(forward())

    f = timer.median(forward)
    fb = timer.median(both)
    saved = SavedBytes()
    with saved.count():
        kept = forward()
    del kept
    saved.release()
    return LossCost(forward_s=f, backward_s=max(0.0, fb - f), activation_bytes=saved.total,
                    input_bytes=_input_bytes(outs), peak_bytes=_peak(graph, outs, loss_fn, target),
                    target_bytes=_input_bytes([target]))


def _peak(graph: Graph, outs: list[Any], loss_fn: LossFn, target: torch.Tensor) -> int:
    """``LossCost.peak_bytes``: one forward and backward of the loss, counted by ``PeakBytes``."""
    tensors = [t for t in (*outs, target) if isinstance(t, torch.Tensor)]
    with PeakBytes(exclude=tensors) as peak:
        torch.autograd.backward(_call(loss_fn, outs, graph, target))
    return int(peak.peak)


def estimate_loss(graph: Graph, outs: list[Any], loss_fn: LossFn, target: torch.Tensor,
                  price: Callable[[Callable[[], Any], str], float]) -> tuple[LossCost, bool]:
    """Price ``loss_fn`` on the model's (meta) flat outputs ``outs`` (the estimator's run
    of the graph; running it again would double the estimate): ``price(fn, phase)`` runs
    ``fn`` and returns its seconds on the device spec, ``phase`` being ``forward`` or
    ``backward``. A loss that reads values runs on CPU stand-ins of ``outs`` and the
    example's ``target`` instead ([Note: a loss that reads values, estimated]).

    Returns:
        The loss's costs, and whether it ran on stand-ins.

    Raises:
        ProfileError: it fails on meta tensors for another reason than reading values, or on
            the stand-ins too.
    """
    try:
        return _estimate_on(graph, outs, loss_fn, torch.empty_like(target, device="meta"), price), False
    except ProfileError as e:
        if not reads_values(e.__cause__):
            raise
        on_meta = e
    stand_ins = [_stand_in(o) if isinstance(o, torch.Tensor) else o for o in outs]
    real_target = _stand_in(target) if target.is_meta else target.detach().cpu()
    try:
        return _estimate_on(graph, stand_ins, loss_fn, real_target, price), True
    except ProfileError as e:
        raise ProfileError(f"{on_meta.message}; on CPU stand-ins of the output (uniform in [0.25, 0.75)) "
                           f"it failed too: {e.message}", hint=on_meta.hint) from e


def _estimate_on(graph: Graph, outs: list[Any], loss_fn: LossFn, target: torch.Tensor,
                 price: Callable[[Callable[[], Any], str], float]) -> LossCost:
    box: list[torch.Tensor] = []
    saved = SavedBytes()

    def forward() -> None:
        with saved.count():
            box.append(_call(loss_fn, outs, graph, target))

    f = price(forward, "forward")
    b = price(lambda: torch.autograd.backward(box.pop()), "backward")
    saved.release()
    return LossCost(forward_s=f, backward_s=b, activation_bytes=saved.total, input_bytes=_input_bytes(outs),
                    peak_bytes=_peak(graph, outs, loss_fn, target), target_bytes=_input_bytes([target]))


# [Note: a loss that reads values, estimated]
# An estimate runs the loss on the model's meta output, where nothing has a value: a loss
# that reads one fails there. DETR's set loss picks the cheapest matching of queries to
# objects with ``float(sum(cost[q, o] ...))``; Informer's and the Time Series Transformer's
# likelihood builds ``torch.distributions.Normal(mean, std)``, which validates its scale by
# ``if not constraint.check(value).all()``: ``.item()`` on meta tensors, and until 2026-12-07
# `autopipe profile --device meta` (and `autopipe plan --device-spec`) stopped on them.
# Where the loss fails on meta by reading values (``.item()``, ``float()``, ``.tolist()``,
# ``nonzero`` and boolean indexing, an op with no meta kernel), it runs again on CPU
# stand-ins of the output: real tensors of its shapes and dtypes, floating ones uniform in
# [0.25, 0.75) from a fixed seed (positive and below 1: a valid scale, probability or box
# coordinate), integer ones 0; and on the example's own target. Its kernels are priced on the
# device spec from their shapes, as on meta (``CostMode``), and its saved bytes and peak are
# counted the same way, so the profile's loss costs what the meta run would have; a loss
# whose work depends on the values (DETR's matching) is priced for these values. The CPU
# holds the output once, at the micro-batch's size; the profile records that the loss ran so
# (``meta["loss_on"]``). A loss that fails on meta for another reason (a tensor made on the
# CPU, as ``torch.ones(shape)`` without ``device=``) is an error still: on a GPU rank it
# would fail the same way. The model's own forward is never run so: a node of the graph that
# reads a value fails the estimate, naming the node.

def _stand_in(t: torch.Tensor) -> torch.Tensor:
    """A CPU tensor of ``t``'s shape and dtype: floating values uniform in [0.25, 0.75) (a
    fixed seed), others 0 ([Note: a loss that reads values, estimated])."""
    if not (t.is_floating_point() or t.is_complex()):
        return torch.zeros(t.shape, dtype=t.dtype)
    g = torch.Generator().manual_seed(0)
    return (torch.rand(t.shape, generator=g) * 0.5 + 0.25).to(t.dtype)
