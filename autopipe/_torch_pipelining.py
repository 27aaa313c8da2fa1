"""The one module that imports private torch names (a torch upgrade breaks only this file)."""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.distributed.pipelining as pipelining
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed.pipelining import PipelineStage

__all__ = ["FakeTensorMode", "ReceivedWhenNeeded", "messages_within", "pipeline_stage_class", "schedule_class",
           "torch_compute_order"]

# [Note: which torch orders are real]
#
# torch's multi-stage schedules (ScheduleInterleaved1F1B, ScheduleInterleavedZeroBubble,
# ScheduleZBVZeroBubble, ScheduleDualPipeV) are _PipelineScheduleRuntime subclasses:
# each rank executes exactly the actions of its `pipeline_order_with_comms` (its
# `pipeline_order` lowered with the sends and receives), so that program is read from
# torch here, the sends' places included. The single-stage schedules (Schedule1F1B,
# ScheduleGPipe) run a hand-written loop in `_step_microbatches`; their `pipeline_order`
# is only a picture (with idle slots), so for them this returns None and
# autopipe.schedule.actions mirrors the loop instead.

_TORCH_ORDERS = {
    "interleaved-1f1b": "ScheduleInterleaved1F1B",
    "zb-h1": "ScheduleInterleavedZeroBubble",
    "zbv": "ScheduleZBVZeroBubble",
    "dualpipev": "ScheduleDualPipeV",
}
_V_SHAPED = ("zbv", "dualpipev")
"""Schedules whose rank r runs stages r and 2p−1−r (the others: r, r + p, …)."""
_COMPUTE = ("F", "B", "I", "W")
_SENDS = {"SEND_F": "F", "SEND_B": "B"}
"""A send and the kind of compute action whose output it carries (``B``: ``B`` or ``I``)."""

TorchAction = tuple[int, str, int, int]
"""``(stage, kind, micro-batch, sent after)``: see ``torch_compute_order``."""


class _StandInStage:
    """Just enough of a PipelineStage for a schedule to compute its order."""

    def __init__(self, index: int, num_stages: int, ranks: int) -> None:
        self.stage_index = index
        self.num_stages = num_stages
        self.group_size = ranks
        self.group_rank = 0
        self.is_first = index == 0
        self.is_last = index == num_stages - 1
        self.submod = torch.nn.Module()
        self.stage_index_to_group_rank: dict[int, int] = {}


def schedule_class(name: str) -> type[Any] | None:
    """The ``torch.distributed.pipelining`` schedule class called ``name``; None if this torch lacks it."""
    cls = getattr(pipelining, name, None)
    return cls if isinstance(cls, type) else None


def torch_compute_order(schedule: str, num_ranks: int, microbatches: int,
                        virtual_stages: int) -> list[list[TorchAction]] | None:
    """Per rank, the compute actions torch runs, in order, and where it posts their sends.

    Each is ``(stage, kind, micro-batch, sent after)``: ``kind`` is ``F``, ``B`` (full
    backward), ``I`` (input gradients) or ``W`` (weight gradients); ``sent after`` is the
    position (in the rank's list) of the action after which torch posts the action's send
    (its own position where it posts none). An ``OVERLAP_F_B`` action (DualPipeV) is its
    forward and its backward, which torch runs one after the other, and posts both sends
    after the backward ([Note: DualPipeV] in ``autopipe.schedule.dualpipev``). None where
    torch's order is not the one it runs (see the note above) or this torch lacks the
    schedule.
    """
    cls = schedule_class(_TORCH_ORDERS.get(schedule, ""))
    if cls is None:
        return None
    num_stages = num_ranks * virtual_stages
    first = [0, num_stages - 1] if schedule in _V_SHAPED else [k * num_ranks for k in range(virtual_stages)]
    stages = [_StandInStage(index, num_stages, num_ranks) for index in first]
    try:
        program = cls(stages, microbatches).pipeline_order_with_comms
        return [_compute_actions(program.get(r, ())) for r in range(num_ranks)]
    except Exception:  # a torch whose constructor needs more of a stage, or whose lowered
        return None    # program reads otherwise: fall back to the mirror


def _compute_actions(program: Any) -> list[TorchAction]:
    """One rank's lowered program as ``torch_compute_order`` gives it."""
    out: list[TorchAction] = []
    position: dict[tuple[int, str, int], int] = {}
    for a in program:
        kind = str(a.computation_type.value)
        subs = a.sub_actions if a.sub_actions is not None else (a,)
        if kind == "OVERLAP_F_B" or kind in _COMPUTE:
            for sub in subs:
                key = (int(sub.stage_index), str(sub.computation_type.value), int(sub.microbatch_index))
                position[key] = len(out)
                out.append((*key, len(out)))
        elif kind in _SENDS:
            sender = _SENDS[kind]
            key = (int(a.stage_index), sender, int(a.microbatch_index))
            if key not in position and sender == "B":
                key = (key[0], "I", key[2])
            i = position[key]
            out[i] = (*out[i][:3], len(out) - 1)
    return out


# [Note: non-float tensors between stages on older torch]
#
# torch 2.11's PipelineStage (the manual, non-traced stage) marks every received
# buffer ``requires_grad_(True)`` when the schedule has a backward, which fails for a
# bool or integer tensor ("only Tensors of floating point dtype can require
# gradients"): Hugging Face models pass their bool attention mask from stage to
# stage. Its backward then sends a gradient for every received input and stops
# when one is None (a non-float input, or a float input the stage does not
# differentiate through), while the sending stage posts a receive for each of its
# outputs. Newer torch (whose ``_prepare_forward_infra`` takes ``has_backward``)
# marks only what needs a gradient and sends zeros for the rest, so there the
# plain PipelineStage is used. On the older API ``_CompatStage`` does the same, also
# where two stages of one rank hand tensors over in memory (``set_local_fwd_input``).


class _CompatStage(PipelineStage):  # type: ignore[misc]
    """PipelineStage of torch's older API that carries non-float tensors between stages."""

    def _prepare_forward_infra(self, *args: Any, **kwargs: Any) -> Any:
        backward = self.has_backward
        self.has_backward = False  # torch would mark every buffer, integer ones too
        try:
            out = super()._prepare_forward_infra(*args, **kwargs)
        finally:
            self.has_backward = backward
        if backward:
            for infos in self.args_recv_info.values():
                for info in infos:
                    buffer = getattr(info, "buffer", None)
                    if isinstance(buffer, torch.Tensor) and (buffer.is_floating_point() or buffer.is_complex()):
                        buffer.requires_grad_(True)
        return out

    def _get_init_p2p_neighbors_ops(self) -> list[Any]:
        # a first P2P with the neighbours sets up the communicators; a rank alone has
        # none to set up (gloo cannot send to itself)
        return [] if self.group_size == 1 else list(super()._get_init_p2p_neighbors_ops())

    def set_local_fwd_input(self, prev_stage_outputs: Any, mb_index: int) -> None:
        # the previous stage runs on this rank: its outputs are this stage's inputs
        # (torch marks every one as requiring grad, integer ones too)
        outputs = prev_stage_outputs if isinstance(prev_stage_outputs, (tuple, list)) else (prev_stage_outputs,)
        for info, tensor in zip(self.args_recv_info[mb_index], outputs):
            buffer = tensor.detach()
            info.buffer = buffer.requires_grad_(True) if buffer.is_floating_point() else buffer

    def get_local_bwd_output(self, mb_index: int) -> Any:
        grads = super().get_local_bwd_output(mb_index)  # type: ignore[no-untyped-call]
        return tuple(_zeros_for(g, info, self.device) for g, info in zip(grads, self.args_recv_info[mb_index]))

    def get_bwd_send_ops(self, bwd_chunk_id: int) -> Any:
        grads = self.bwd_cache.get(bwd_chunk_id)
        infos = self.args_recv_info.get(bwd_chunk_id, ())
        if grads is not None and not self.is_first:
            # the previous stage waits for one gradient per tensor it sent: zeros where none
            self.bwd_cache[bwd_chunk_id] = tuple(_zeros_for(g, info, self.device) for g, info in zip(grads, infos))
        return super().get_bwd_send_ops(bwd_chunk_id)


def _zeros_for(grad: Any, info: Any, device: torch.device) -> Any:
    """``grad``, or zeros shaped like the received buffer where there is none (on ``device``:
    the buffer may be a placeholder by then, [Note: receive buffers made when needed])."""
    buffer = getattr(info, "buffer", None)
    if grad is None and isinstance(buffer, torch.Tensor):
        return torch.zeros(buffer.shape, dtype=buffer.dtype, device=device)
    return grad


# [Note: receive buffers made when needed]
#
# torch's PipelineStage makes, the first time it runs, a receive buffer for every
# micro-batch: one for each tensor it receives from the stage before (``args_recv_info``)
# and one for the gradient of each tensor it sends (``grad_recv_info``), and keeps all of
# them for the rest of training: m·(X_in + Y_out) bytes a stage, the whole step's batch
# of activations whatever the micro-batch size. For a Llama-2-70B stage with 32
# micro-batches of 4 × 4,096 tokens that is 66 GiB, more than its parameters and their
# Adam states together. autopipe's stages hold them only while they are needed:
#
# - while torch prepares a stage (``_prepare_forward_infra``, ``_prepare_backward_infra``)
#   every receive buffer is made on the meta device: shape, strides and dtype, no memory;
# - a buffer is made on the stage's device when its receive is posted
#   (``get_fwd_recv_ops``, ``get_bwd_recv_ops``);
# - the stage lets it go (a meta placeholder again) once used: an activation's after the
#   micro-batch's forward, a gradient's after its backward. What still reads it keeps it
#   alive: the forward's inputs stay in ``fwd_cache``, and autograd's saved tensors, until
#   that micro-batch's backward.
#
# So a received activation lives from its receive to its micro-batch's backward, as the
# outputs a stage sends do, and a received gradient for one backward. Where two stages of
# a rank hand tensors over in memory (a V's tip), the placeholder is replaced by the
# tensor itself and let go the same way; where the later stage has no gradient for a
# tensor it was handed, torch zeroes the earlier one's buffer in place, so that buffer is
# given memory first (``set_local_bwd_input``). On a torch that makes the buffers elsewhere than
# through ``_make_tensor_from_meta``, the first step makes them all as torch does; the
# stage lets them go after use all the same.


@contextlib.contextmanager
def _buffers_on_meta() -> Iterator[None]:
    """Inside this, torch's stage module makes every tensor from metadata on the meta device."""
    from torch.distributed.pipelining import stage as stage_module

    make = getattr(stage_module, "_make_tensor_from_meta", None)
    if make is None:
        yield
        return

    def on_meta(meta: Any, device: Any) -> torch.Tensor:
        return make(meta, torch.device("meta"))  # type: ignore[no-any-return]

    stage_module._make_tensor_from_meta = on_meta  # type: ignore[attr-defined]
    try:
        yield
    finally:
        stage_module._make_tensor_from_meta = make  # type: ignore[attr-defined]


_META = torch.device("meta")


def _placed(infos: Any, device: torch.device) -> None:
    """Give every buffer among ``infos`` that is not on ``device``'s side of the meta line an
    empty one of its shape, strides and dtype on ``device``: memory for a placeholder when
    ``device`` is real, a placeholder for a used buffer when it is the meta device."""
    for info in infos:
        buffer = getattr(info, "buffer", None)
        if isinstance(buffer, torch.Tensor) and buffer.is_meta != (device.type == "meta"):
            new = torch.empty_strided(buffer.shape, buffer.stride(), dtype=buffer.dtype, device=device)
            info.buffer = new.requires_grad_(True) if buffer.requires_grad else new


class ReceivedWhenNeeded:
    """A PipelineStage mix-in that holds receive buffers only while they are needed
    ([Note: receive buffers made when needed])."""

    args_recv_info: dict[int, Any]
    grad_recv_info: dict[int, Any]
    device: torch.device

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._losses_before_w: dict[int, torch.Tensor] = {}
        """A split backward's losses, cut from their graphs after their W."""

    def _prepare_forward_infra(self, *args: Any, **kwargs: Any) -> Any:
        with _buffers_on_meta():
            return super()._prepare_forward_infra(*args, **kwargs)  # type: ignore[misc]

    def _prepare_backward_infra(self, *args: Any, **kwargs: Any) -> Any:
        with _buffers_on_meta():
            return super()._prepare_backward_infra(*args, **kwargs)  # type: ignore[misc]

    def get_fwd_recv_ops(self, fwd_chunk_id: int) -> Any:
        _placed(self.args_recv_info.get(fwd_chunk_id, ()), self.device)
        return super().get_fwd_recv_ops(fwd_chunk_id)  # type: ignore[misc]

    def get_bwd_recv_ops(self, bwd_chunk_id: int) -> Any:
        _placed(getattr(self, "grad_recv_info", {}).get(bwd_chunk_id, ()), self.device)
        return super().get_bwd_recv_ops(bwd_chunk_id)  # type: ignore[misc]

    def set_local_bwd_input(self, next_stage_bwd_outputs: Any, mb_index: int) -> Any:
        # where the next stage on this rank has no gradient for a tensor, torch zeroes the
        # buffer in place: it needs memory then
        infos = getattr(self, "grad_recv_info", {}).get(mb_index, ())
        _placed([info for info, grad in zip(infos, next_stage_bwd_outputs) if grad is None], self.device)
        return super().set_local_bwd_input(next_stage_bwd_outputs, mb_index)  # type: ignore[misc]

    def forward_one_chunk(self, fwd_chunk_id: int, *args: Any, **kwargs: Any) -> Any:
        out = super().forward_one_chunk(fwd_chunk_id, *args, **kwargs)  # type: ignore[misc]
        _placed(self.args_recv_info.get(fwd_chunk_id, ()), _META)
        return out

    def backward_one_chunk(self, bwd_chunk_id: int, *args: Any, **kwargs: Any) -> Any:
        out = super().backward_one_chunk(bwd_chunk_id, *args, **kwargs)  # type: ignore[misc]
        _placed(getattr(self, "grad_recv_info", {}).get(bwd_chunk_id, ()), _META)
        loss = kwargs.get("loss", args[0] if args else None)
        if isinstance(loss, torch.Tensor):
            if kwargs.get("full_backward", True):
                _graph_dropped(loss)
            else:  # after the weights' pass
                self._losses_before_w[bwd_chunk_id] = loss
        return out

    def backward_weight_one_chunk(self, bwd_chunk_id: int, *args: Any, **kwargs: Any) -> Any:
        out = super().backward_weight_one_chunk(bwd_chunk_id, *args, **kwargs)  # type: ignore[misc]
        loss = self._losses_before_w.pop(bwd_chunk_id, None)
        if loss is not None:
            _graph_dropped(loss)
        return out


def _graph_dropped(loss: torch.Tensor) -> None:
    """Cut a micro-batch's loss, backward done, from its graph: the schedule keeps the loss
    until the step ends, and its graph's nodes (their saved tensors freed, not the nodes)
    would keep every input leaf of the last stage, the received activations, alive."""
    if loss.grad_fn is None or loss._is_view():
        return
    loss.detach_()


def pipeline_stage_class() -> type[Any]:
    """The PipelineStage class to build stages with on this torch (see the note above)."""
    params = inspect.signature(PipelineStage._prepare_forward_infra).parameters
    return PipelineStage if "has_backward" in params else _CompatStage


_POST_AND_WAIT = ("_batch_p2p", "_wait_batch_p2p")
"""The functions through which torch's schedules post their sends and receives, and wait on them."""


@contextlib.contextmanager
def _messages_wrapped(wrap: Callable[[Callable[..., Any], bool], Callable[..., Any]]) -> Iterator[None]:
    """Inside this, torch's schedules post (``wrap(f, True)``) and wait (``wrap(f, False)``)
    through the wrapped functions; nothing changes on a torch without both of them."""
    from torch.distributed.pipelining import schedules

    found = {name: getattr(schedules, name, None) for name in _POST_AND_WAIT}
    originals = {name: f for name, f in found.items() if callable(f)}
    if len(originals) < len(found):
        yield
        return
    for name, f in originals.items():
        setattr(schedules, name, wrap(f, name == "_batch_p2p"))
    try:
        yield
    finally:
        for name, f in originals.items():
            setattr(schedules, name, f)


def messages_within(around: Callable[[], AbstractContextManager[Any]]) -> AbstractContextManager[None]:
    """Inside this, torch's schedules post and wait on their messages inside ``around()``,
    and yield the core once before posting ([Note: a busy core while a rank waits] in
    ``autopipe.runtime.busy_core``). Nothing changes on a torch without those functions."""
    def wrapped(f: Callable[..., Any], posts: bool) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            with around():
                if posts:
                    os.sched_yield()  # this core's gloo thread first, if a message woke it
                return f(*args, **kwargs)
        return call

    return _messages_wrapped(wrapped)

Record = Callable[[str, int, int, float, float], None]
"""``record(kind, stage, micro-batch, start, end)``, times from ``time.perf_counter``."""

_STAGE_ACTIONS = (("forward_one_chunk", "F"), ("backward_one_chunk", "B"), ("backward_weight_one_chunk", "W"))
"""PipelineStage methods that run one compute action, and the action each is."""


@contextlib.contextmanager
def actions_timed(stages: list[Any], schedule: Any, record: Record,
                  settle: Callable[[], None] | None = None) -> Iterator[None]:
    """Inside this, each compute action of ``stages`` (a forward ``F``; a backward ``B``, or
    ``I`` when it makes only the input gradients; ``W``), the loss ``L`` on the last stage,
    and the schedule's posting (``post``) and waiting on messages (``wait``, stage and
    micro-batch −1) call ``record`` when it ends, after ``settle()`` where given (a CUDA
    synchronize: the kernels an action queued are then part of its time). Installed
    innermost: the times are the actions' own. Nothing is timed that this torch does not
    run through these names."""
    import time

    def timed(f: Callable[..., Any], kind: Callable[[tuple[Any, ...], dict[str, Any]], tuple[str, int, int]]
              ) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return f(*args, **kwargs)
            finally:
                if settle is not None:
                    settle()
                record(*kind(args, kwargs), t0, time.perf_counter())
        return call

    patched: list[tuple[Any, str]] = []
    for stage in stages:
        for name, kind in _STAGE_ACTIONS:
            f = getattr(stage, name, None)
            if not callable(f):
                continue

            def action(args: tuple[Any, ...], kwargs: dict[str, Any], kind: str = kind,
                       index: int = stage.stage_index) -> tuple[str, int, int]:
                full = kwargs.get("full_backward", args[2] if len(args) > 2 else True)
                return ("I" if kind == "B" and not full else kind), index, int(args[0])
            setattr(stage, name, timed(f, action))
            patched.append((stage, name))
    loss = getattr(schedule, "_maybe_compute_loss", None)
    last = [stage for stage in stages if stage.is_last]
    if callable(loss) and last:  # torch calls it after every forward; it computes on the last stage
        def computed(args: tuple[Any, ...], kwargs: dict[str, Any], index: int = last[0].stage_index
                     ) -> tuple[str, int, int]:
            return "L", index, int(args[3])
        timed_loss = timed(loss, computed)

        def on_last(stage: Any, *args: Any, **kwargs: Any) -> Any:
            return (timed_loss if stage.is_last else loss)(stage, *args, **kwargs)
        schedule._maybe_compute_loss = on_last
        patched.append((schedule, "_maybe_compute_loss"))

    def message(f: Callable[..., Any], posts: bool) -> Callable[..., Any]:
        what = "post" if posts else "wait"
        return timed(f, lambda args, kwargs: (what, -1, -1))

    try:
        with _messages_wrapped(message):
            yield
    finally:
        for obj, name in reversed(patched):
            delattr(obj, name)  # the instance's own attribute; the class's method shows again
