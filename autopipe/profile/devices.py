"""DeviceSpec: what the estimator and the planner know about an accelerator, and its JSON files."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autopipe._jsonio import read_json, write_json_atomic
from autopipe._units import parse_size
from autopipe.errors import AutopipeError, DeviceSpecError

SCHEMA = "autopipe.device/1"
BUILTIN_DIR = Path(__file__).resolve().parent / "devices"
KERNEL_CLASSES = ("convolution", "matmul", "attention", "batch_norm", "group_norm")
"""Kernel classes a spec may give an ``efficiency`` and a ``call_overhead_s`` for."""
BYTE_BOUND = ("batch_norm", "group_norm")
"""Kernel classes whose ``efficiency`` scales the memory bandwidth, not the peak FLOP/s."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceSpec:
    """Peak rates and sizes of one accelerator, for a roofline time model."""

    name: str
    """Short name: ``h100``."""
    peak_flops: dict[str, float]
    """dtype name (``float32``, ``bfloat16``, ``float16``, ``tf32``, ``float64``) → FLOP/s."""
    memory_bandwidth: float
    """Device memory bandwidth, bytes/s."""
    memory: int
    """Device memory, bytes."""
    link_bandwidth: float
    """Bandwidth between neighbouring pipeline stages, bytes/s, one direction."""
    kernel_overhead_s: float = 0.0
    """Fixed device time added to every kernel, seconds (with no dispatch figures below, it
    stands for launch and dispatch too, as it did before they existed)."""
    dispatch_forward_s: float = 0.0
    """Host time per aten call in the forward, views and metadata ops included, autograd
    recording included, seconds ([Note: the launch queue] in ``autopipe.profile._queue``)."""
    dispatch_backward_s: float = 0.0
    """Host time per aten call in the backward (the autograd engine's), seconds."""
    efficiency: dict[str, dict[str, float]] = field(default_factory=dict)
    """Kernel class → rate key (``bfloat16``, ``tf32``, ...) → the fraction of the peak its
    kernels reach, 1 where not given: of ``peak_flops`` for ``convolution``, ``matmul`` and ``attention``,
    of ``memory_bandwidth`` for the ``BYTE_BOUND`` ones (batch and group norm)."""
    call_overhead_s: dict[str, float] = field(default_factory=dict)
    """Kernel class → device seconds each of its calls costs on top of its roofline time
    (a ``convolution`` call runs several kernels: layout changes, split reductions)."""
    library_bytes: int = 0
    """Device memory its libraries hold in a training process beyond any tensor: cuBLAS's
    workspaces, one per thread that runs matmuls ([Note: the libraries' workspaces] in
    ``autopipe.profile.libraries``); bytes, 0 where none."""
    source: str = ""
    """Where the numbers come from (datasheet, measurement)."""
    description: str = ""
    """A longer human-readable name."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Unknown JSON keys, kept so that a round trip loses nothing."""

    def __post_init__(self) -> None:
        if not self.name:
            raise DeviceSpecError("device spec has an empty name", hint='set "name", e.g. "h100"')
        if not self.peak_flops:
            raise DeviceSpecError(f"device spec {self.name}: peak_flops is empty",
                                  hint='give at least {"float32": FLOP/s}')
        for dtype, rate in self.peak_flops.items():
            _positive(self.name, f"peak_flops[{dtype!r}]", rate)
        _positive(self.name, "memory_bandwidth", self.memory_bandwidth)
        _positive(self.name, "memory", self.memory)
        _positive(self.name, "link_bandwidth", self.link_bandwidth)
        if not (math.isfinite(self.kernel_overhead_s) and self.kernel_overhead_s >= 0):
            raise DeviceSpecError(
                f"device spec {self.name}: kernel_overhead_s = {self.kernel_overhead_s} is not a "
                "non-negative time", hint="use seconds, e.g. 5e-6, or 0")
        for what in ("dispatch_forward_s", "dispatch_backward_s"):
            value = getattr(self, what)
            if not (math.isfinite(value) and 0 <= value < 1):
                raise DeviceSpecError(f"device spec {self.name}: {what} = {value} is not a host time "
                                      "per call", hint="use seconds, e.g. 1.5e-5, or 0 to ignore the host")
        for kind, rates in self.efficiency.items():
            if kind not in KERNEL_CLASSES:
                raise DeviceSpecError(f"device spec {self.name}: efficiency names an unknown kernel "
                                      f"class {kind!r}", hint=f"use {' or '.join(KERNEL_CLASSES)}")
            for key, frac in rates.items():
                if not (isinstance(frac, (int, float)) and 0 < frac <= 1):
                    raise DeviceSpecError(
                        f"device spec {self.name}: efficiency[{kind!r}][{key!r}] = {frac!r} is not a "
                        "fraction of the peak", hint="use a number in (0, 1], e.g. 0.1")
        if not (isinstance(self.library_bytes, int) and self.library_bytes >= 0):
            raise DeviceSpecError(f"device spec {self.name}: library_bytes = {self.library_bytes!r}",
                                  hint="give the bytes its libraries hold per process, e.g. 69206016, or 0")
        for kind, extra in self.call_overhead_s.items():
            if kind not in KERNEL_CLASSES or not (isinstance(extra, (int, float)) and 0 <= extra < 1):
                raise DeviceSpecError(f"device spec {self.name}: call_overhead_s[{kind!r}] = {extra!r}",
                                      hint=f"give seconds in [0, 1) for {' or '.join(KERNEL_CLASSES)}")

    def flops_for(self, dtype: str) -> float:
        """Peak FLOP/s for ``dtype`` (``torch.bfloat16`` or ``bfloat16``).

        Raises:
            DeviceSpecError: the spec lists no rate for that dtype.
        """
        key = dtype.removeprefix("torch.")
        if key in self.peak_flops:
            return self.peak_flops[key]
        raise DeviceSpecError(
            f"device spec {self.name} has no peak_flops for {key} (it has {', '.join(sorted(self.peak_flops))})",
            hint=f'add "{key}": FLOP/s to its peak_flops, or profile with another --dtype')

    def dispatch_s(self, phase: str) -> float:
        """Host seconds per aten call in ``phase``: ``forward``, else a backward phase."""
        return self.dispatch_forward_s if phase == "forward" else self.dispatch_backward_s

    def bandwidth_for(self, kind: str, dtype: str) -> float:
        """Bytes/s that a ``kind`` kernel moves in ``dtype``: the memory bandwidth, times
        ``efficiency[kind]`` for a BYTE_BOUND class."""
        if kind not in BYTE_BOUND:
            return self.memory_bandwidth
        return self.memory_bandwidth * self.efficiency.get(kind, {}).get(dtype.removeprefix("torch."), 1.0)

    def overhead_for(self, kind: str) -> float:
        """Extra device seconds per call of a ``kind`` kernel (``call_overhead_s``; 0 if not given)."""
        return self.call_overhead_s.get(kind, 0.0)

    def kernel_rate(self, kind: str, dtype: str, *, tf32: bool = False) -> float:
        """FLOP/s that a ``kind`` kernel (a KERNEL_CLASSES name, or anything else for a plain
        kernel) reaches in ``dtype``: the peak, on the TF32 units for float32 when ``tf32``
        is allowed and the spec has a ``tf32`` rate, times ``efficiency[kind]``.

        Raises:
            DeviceSpecError: the spec lists no rate for that dtype.
        """
        key = dtype.removeprefix("torch.")
        if tf32 and key == "float32" and "tf32" in self.peak_flops:
            key = "tf32"
        if kind in BYTE_BOUND:
            return self.flops_for(key)
        return self.flops_for(key) * self.efficiency.get(kind, {}).get(key, 1.0)

    def to_json(self) -> dict[str, Any]:
        """The ``autopipe.device/1`` JSON object."""
        return {
            "schema": SCHEMA, "name": self.name, "description": self.description,
            "peak_flops": dict(self.peak_flops), "memory_bandwidth": self.memory_bandwidth,
            "memory": self.memory, "link_bandwidth": self.link_bandwidth,
            "kernel_overhead_s": self.kernel_overhead_s, "dispatch_forward_s": self.dispatch_forward_s,
            "dispatch_backward_s": self.dispatch_backward_s,
            "efficiency": {k: dict(v) for k, v in self.efficiency.items()},
            "call_overhead_s": dict(self.call_overhead_s),
            **({"library_bytes": self.library_bytes} if self.library_bytes else {}),
            "source": self.source, **self.extra,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "<device spec>") -> DeviceSpec:
        """Build from a JSON object; ``source`` names the file in errors.

        ``memory`` may be bytes or a size string (``"80GB"``).

        Raises:
            DeviceSpecError: a field is missing or has a wrong value.
        """
        known = {"schema", "name", "description", "peak_flops", "memory_bandwidth", "memory",
                 "link_bandwidth", "kernel_overhead_s", "dispatch_forward_s", "dispatch_backward_s",
                 "efficiency", "call_overhead_s", "library_bytes", "source"}
        missing = [k for k in ("name", "peak_flops", "memory_bandwidth", "memory", "link_bandwidth")
                   if k not in data]
        if missing:
            raise DeviceSpecError(f"{source}: missing {', '.join(missing)}",
                                  hint="see autopipe/profile/devices/h100.json for a complete spec")
        try:
            flops = data["peak_flops"]
            if not isinstance(flops, dict):
                raise TypeError(f"peak_flops is a {type(flops).__name__}, not an object")
            return cls(
                name=str(data["name"]), description=str(data.get("description", "")),
                peak_flops={str(k): float(v) for k, v in flops.items()},
                memory_bandwidth=float(data["memory_bandwidth"]),
                memory=_size(data, "memory"),
                link_bandwidth=float(data["link_bandwidth"]),
                kernel_overhead_s=float(data.get("kernel_overhead_s", 0.0)),
                dispatch_forward_s=float(data.get("dispatch_forward_s", 0.0)),
                dispatch_backward_s=float(data.get("dispatch_backward_s", 0.0)),
                efficiency=_efficiency(data.get("efficiency", {})),
                call_overhead_s={str(k): float(v) for k, v in dict(data.get("call_overhead_s", {})).items()},
                library_bytes=_size(data, "library_bytes"),
                source=str(data.get("source", "")),
                extra={k: v for k, v in data.items() if k not in known},
            )
        except DeviceSpecError as e:
            raise DeviceSpecError(f"{source}: {e.message}", hint=e.hint) from None
        except AutopipeError as e:  # a size that does not parse
            raise DeviceSpecError(f"{source}: {e.message}", hint=e.hint) from None
        except (TypeError, ValueError) as e:
            raise DeviceSpecError(f"{source}: malformed device spec ({e})",
                                  hint="numbers in FLOP/s, bytes/s and bytes") from None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically as JSON."""
        write_json_atomic(path, self.to_json())


def _size(data: dict[str, Any], key: str) -> int:
    """``data[key]`` as bytes (0 where absent); an ``AutopipeError`` that names the key."""
    try:
        return parse_size(data.get(key, 0))
    except AutopipeError as e:
        raise AutopipeError(f"{key}: {e.message}", hint=e.hint) from None


def _efficiency(data: Any) -> dict[str, dict[str, float]]:
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise TypeError('efficiency is not an object of objects, e.g. {"convolution": {"bfloat16": 0.1}}')
    return {str(k): {str(d): float(f) for d, f in v.items()} for k, v in data.items()}


def _positive(name: str, what: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise DeviceSpecError(f"device spec {name}: {what} = {value!r} is not a positive number",
                              hint="use FLOP/s, bytes/s and bytes, e.g. 3.35e12")


def builtin_device_specs() -> list[str]:
    """Names of the device specs shipped with autopipe."""
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.json"))


def load_device_spec(name_or_path: str | os.PathLike[str]) -> DeviceSpec:
    """Load a shipped spec by name (``"h100"``) or a JSON file by path.

    Raises:
        DeviceSpecError: no such spec, or the file is corrupt.
    """
    text = str(name_or_path)
    path = Path(text)
    if not path.suffix and os.sep not in text and "/" not in text:
        path = BUILTIN_DIR / f"{text.lower()}.json"
        if not path.is_file():
            raise DeviceSpecError(
                f"unknown device spec {text!r}",
                hint=f"use one of {', '.join(builtin_device_specs())}, or the path to your own JSON file")
    return DeviceSpec.from_json(read_json(path, SCHEMA, DeviceSpecError), source=str(path))
