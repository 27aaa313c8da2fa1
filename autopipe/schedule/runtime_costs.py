"""What running a plan costs beyond its stages' profiled compute: runtime overheads and model extras.

A profile times the model's own nodes. Training a plan also pays, per
micro-batch, the pipeline stage's bookkeeping around each module call and a
send latency per boundary, and, per step, the loss on the last stage and the
optimizer step. ``RuntimeCosts`` holds the machine's share (measured once by
``autopipe.runtime.calibrate``), ``ModelCosts`` the model's share; both feed
``simulate_plan``.
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import asdict, dataclass, fields
from typing import Any

from autopipe._jsonio import read_json, write_json_atomic
from autopipe.errors import PlanError

SCHEMA = "autopipe.runtime-costs/1"


def _check_non_negative(obj: Any) -> None:
    """Raise PlanError for a figure of ``obj`` that is not a finite non-negative number (a
    string, null or true from a costs file too: until 2026-12-07 those were let through,
    to fail later as a TypeError in the simulator), or a name that is not a string."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        name = f"{type(obj).__name__}.{f.name}"
        if isinstance(f.default, str):
            if not isinstance(value, str):
                raise PlanError(f"{name} is {value!r}, not a string", hint=f"give a name, e.g. {f.default!r}")
            continue
        many = isinstance(f.default, tuple)
        if many and not isinstance(value, (tuple, list)):
            raise PlanError(f"{name} is {value!r}, not a list of numbers", hint="give one number per stage")
        for v in value if many else (value,):
            if isinstance(v, bool) or not isinstance(v, numbers.Real):  # numpy's too
                raise PlanError(f"{name} is {value!r}, not a number",
                                hint="times, sizes and rates are numbers, e.g. 0.0")
            if not (math.isfinite(v) and float(v) >= 0):
                raise PlanError(f"{name} is {value}",
                                hint="times, sizes and rates must be finite and non-negative")


@dataclass(frozen=True, slots=True, kw_only=True)
class RuntimeCosts:
    """The pipeline runtime's fixed costs on one machine (device, backend, thread count)."""

    forward_overhead_s: float = 0.0
    """Per forward action: the stage's work around the module call (argument handling, autograd setup)."""
    backward_overhead_s: float = 0.0
    """Per backward action, beyond the module's own backward."""
    step_overhead_s: float = 0.0
    """Per step and rank, whatever the micro-batch count: the schedule's own work (splitting
    the batch into micro-batches, clearing the stage's state)."""
    send_latency_s: float = 0.0
    """Per send of one micro-batch's boundary tensors, beyond bytes / bandwidth."""
    link_bandwidth: float = 0.0
    """Bytes/s of one link in one direction; 0 keeps the plan's own send times."""
    allreduce_bandwidth: float = 0.0
    """Bytes/s of an all-reduce between two ranks (seconds = ``allreduce_latency_s`` + bytes /
    this); 0: not measured."""
    allreduce_latency_s: float = 0.0
    """Fixed seconds of an all-reduce between two ranks, whatever its size."""
    rows_sum_bandwidth: float = 0.0
    """Bytes/s of a tied pair's sum where one copy is an embedding's gradient, zero but for
    a step's rows: the other copy crosses once ([Note: a tied embedding's rows] in
    ``autopipe.runtime.sum_over``); seconds = ``rows_sum_latency_s`` + its bytes / this. 0:
    not measured (priced as the all-reduce)."""
    rows_sum_latency_s: float = 0.0
    """Fixed seconds of that sum."""
    optimizer: str = "adam"
    """The optimizer the two ``optimizer_*`` figures were measured with."""
    optimizer_tensor_s: float = 0.0
    """Optimizer step, with the gradient averaging before it, per parameter tensor."""
    optimizer_element_s: float = 0.0
    """The same, per parameter element."""
    device: str = "cpu"
    backend: str = "gloo"
    threads: int = 1
    """Compute threads per rank during the measurement."""

    def __post_init__(self) -> None:
        _check_non_negative(self)

    def send_s(self, nbytes: float) -> float | None:
        """Seconds to send ``nbytes`` over one link; None without a measured bandwidth."""
        if self.link_bandwidth <= 0:
            return None
        return self.send_latency_s + nbytes / self.link_bandwidth

    def tied_sum_s(self, nbytes: float, rows: bool = False) -> float:
        """Seconds to sum ``nbytes`` of tied gradients between two holders, as the runtime
        does: on the rows line where ``rows`` (one holder an embedding's gradient) and it was
        measured, else on the all-reduce line where measured, else a round trip of the
        bytes over the link (0 without a link bandwidth)."""
        if nbytes <= 0:
            return 0.0
        if rows and self.rows_sum_bandwidth > 0:
            return self.rows_sum_latency_s + nbytes / self.rows_sum_bandwidth
        if self.allreduce_bandwidth > 0:
            return self.allreduce_latency_s + nbytes / self.allreduce_bandwidth
        return 2 * (self.send_s(nbytes) or 0.0)

    def optimizer_s(self, tensors: int, elements: int) -> float:
        """Seconds of one optimizer step over ``tensors`` parameters of ``elements`` in all."""
        return tensors * self.optimizer_tensor_s + elements * self.optimizer_element_s

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically as JSON."""
        write_json_atomic(path, {"schema": SCHEMA, **asdict(self)})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RuntimeCosts:
        """Read a file written by ``save``.

        Raises:
            PlanError: missing, corrupt, wrong-schema or malformed file.
        """
        data = read_json(path, SCHEMA, PlanError)
        data.pop("schema")
        try:
            return cls(**data)
        except TypeError as e:
            raise PlanError(f"{path}: malformed runtime costs ({e})",
                            hint="measure them again with `python -m autopipe.runtime.calibrate`") from None
        except PlanError as e:
            raise PlanError(f"{path}: malformed runtime costs ({e.message})", hint=e.hint) from None


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelCosts:
    """What one model adds to a plan's profiled stages when it trains."""

    loss_forward_s: float = 0.0
    """The loss function on one micro-batch's output (runs on the last stage after its forward)."""
    loss_backward_s: float = 0.0
    """The loss's backward (part of the last stage's backward)."""
    stage_param_tensors: tuple[int, ...] = ()
    """Per stage, parameter tensors its optimizer updates (tied ones in every holder)."""
    stage_param_elements: tuple[int, ...] = ()
    """Per stage, parameter elements."""
    stage_tied_bytes: tuple[int, ...] = ()
    """Per stage, bytes of gradients summed with other stages holding the same weights."""
    stage_tied_rows_bytes: tuple[int, ...] = ()
    """Per stage, the part of ``stage_tied_bytes`` summed on the rows line: tied embeddings
    whose embedding side sends only the rows its step wrote ([Note: a tied embedding's rows]
    in ``autopipe.runtime.sum_over``)."""
    compute_scale: float = 1.0
    """Factor on the profiled stage times: the whole model's measured forward+backward over
    the sum of its nodes' (a node timed alone runs with warm caches; the profile keeps both)."""
    stage_forward_s: tuple[float, ...] = ()
    """Per stage, its forward timed as one module (the runtime's split); replaces the
    profiled sum and ``compute_scale`` when given."""
    stage_backward_s: tuple[float, ...] = ()
    """Per stage, its backward timed as one module (split into input and weight parts
    in the plan's proportion)."""
    stage_optimizer_s: tuple[float, ...] = ()
    """Per stage, the once-per-step optimizer work on its parameters (zeroing, averaging
    and stepping), measured; replaces the runtime's per-tensor/per-element estimate when given."""

    def __post_init__(self) -> None:
        _check_non_negative(self)
        lengths = {len(t) for t in (self.stage_param_tensors, self.stage_param_elements,
                                    self.stage_tied_bytes, self.stage_tied_rows_bytes, self.stage_forward_s,
                                    self.stage_backward_s, self.stage_optimizer_s) if t}
        if len(lengths) > 1:
            raise PlanError(f"ModelCosts has per-stage tuples of lengths {sorted(lengths)}",
                            hint="give one entry per stage in each")
