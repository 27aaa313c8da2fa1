"""The devices a plan runs on: one memory limit for all, or a ``devices.json`` file.

A devices file is a JSON list (or ``{"devices": [...]}``) with one entry per stage::

    [{"name": "gpu0", "memory": "80GiB", "speed": 1.0},
     {"name": "a100", "spec": "a100", "count": 3}]

``memory`` is bytes or a size string; ``speed`` is compute speed relative to the
profiled device (2.0 = twice as fast). ``spec`` names a device spec (``h100``,
``a100``, or a spec file): its memory is the default and, for an estimated profile,
its peak FLOP/s over the profile's spec gives the speed. ``count`` repeats an entry
(names get ``:0``, ``:1``, …). Entries map to stages in order.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autopipe._units import parse_size
from autopipe.errors import AutopipeError, DeviceSpecError
from autopipe.plan_format import Device, label_problem
from autopipe.profile.profile import Profile

DevicesArg = str | os.PathLike[str] | Sequence[Device | dict[str, Any]]


def default_kind(profile: Profile | None) -> str:
    """``cpu`` for CPU-measured profiles, else ``cuda``."""
    return "cpu" if profile is not None and profile.device == "cpu" else "cuda"


def resolve_devices(num_stages: int, *, memory_limit: str | int | None = None,
                    devices: DevicesArg | None = None, profile: Profile | None = None) -> tuple[Device, ...]:
    """One Device per stage.

    Args:
        num_stages: number of stages.
        memory_limit: the same limit for every stage (``"80GiB"``, bytes); None = unlimited.
        devices: a devices file path, or a list of Device / entry dicts (see module doc).
        profile: the profile, for spec-derived speeds.

    Raises:
        DeviceSpecError: both or a malformed ``devices``; a count that does not match.
    """
    if devices is not None and memory_limit is not None:
        raise DeviceSpecError("both a memory limit and a devices list were given",
                              hint="use --memory for identical devices or --devices for a list, not both")
    if devices is None:
        try:
            mem = parse_size(memory_limit) if memory_limit is not None else 0
        except AutopipeError as e:
            raise DeviceSpecError(f"memory limit: {e.message}", hint=e.hint) from None
        kind = default_kind(profile)
        return tuple(Device(name=f"{kind}:{i}", memory=mem) for i in range(num_stages))
    source = "devices"
    if isinstance(devices, (str, os.PathLike)):
        source = str(devices)
        entries = _read(Path(devices))
    else:
        entries = list(devices)
    out: list[Device] = []
    for k, item in enumerate(entries):
        if isinstance(item, Device):
            out.append(item)
        elif isinstance(item, dict):
            out += _entry(item, f"{source}: entry {k}", profile)
        else:
            raise DeviceSpecError(f"{source}: entry {k} is a {type(item).__name__}, not an object",
                                  hint='write {"name": "gpu0", "memory": "80GiB"}')
    if len(out) != num_stages:
        raise DeviceSpecError(f"{source} lists {len(out)} devices but the plan has {num_stages} stages",
                              hint=f"list {num_stages} devices (\"count\" repeats one)"
                                   + (f", or plan {len(out)} stages" if out else ""))
    names = [d.name for d in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DeviceSpecError(f"{source}: device name {dup[0]!r} appears more than once",
                              hint="give every device its own name")
    return tuple(out)


def _read(path: Path) -> list[Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DeviceSpecError(f"{path}: no such devices file", hint="check the path") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DeviceSpecError(f"{path}: cannot read ({e})", hint="check the path") from None
    except json.JSONDecodeError as e:
        raise DeviceSpecError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})",
                              hint='write a list like [{"name": "gpu0", "memory": "80GiB"}]') from None
    if isinstance(data, dict) and isinstance(data.get("devices"), list):
        data = data["devices"]
    if not isinstance(data, list) or not data:
        raise DeviceSpecError(f"{path}: expected a non-empty list of devices",
                              hint='write [{"name": "gpu0", "memory": "80GiB"}, ...]')
    return data


_KEYS = {"name", "memory", "speed", "spec", "count"}


def _entry(e: dict[str, Any], where: str, profile: Profile | None) -> list[Device]:
    unknown = sorted(set(e) - _KEYS)
    if unknown:
        raise DeviceSpecError(f"{where}: unknown key {unknown[0]!r}",
                              hint=f"use {', '.join(sorted(_KEYS))}")
    name = e.get("name", e.get("spec"))
    if not isinstance(name, str) or not name:
        raise DeviceSpecError(f"{where}: no name", hint='add "name": "gpu0"')
    spec = None
    if "spec" in e:
        from autopipe.profile.devices import load_device_spec

        spec = load_device_spec(str(e["spec"]))
    if "memory" in e:
        try:
            memory = parse_size(e["memory"])
        except AutopipeError as err:
            raise DeviceSpecError(f"{where} ({name}): memory: {err.message}", hint=err.hint) from None
    elif spec is not None:
        memory = spec.memory
    else:
        raise DeviceSpecError(f"{where} ({name}): no memory", hint='add "memory": "80GiB" or "spec": "h100"')
    if "speed" in e:
        speed = e["speed"]
        if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not speed > 0 \
                or speed == float("inf"):
            raise DeviceSpecError(f"{where} ({name}): speed {speed!r} is not a positive number",
                                  hint="speed is relative to the profiled device, e.g. 1.0 or 0.5")
        speed = float(speed)
    elif spec is not None:
        speed = _spec_speed(spec, profile, where, name)
    else:
        speed = 1.0
    count = e.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise DeviceSpecError(f"{where} ({name}): count {count!r} is not a positive integer",
                              hint='"count": 4 repeats the entry four times')
    names = [name] if count == 1 else [f"{name}:{i}" for i in range(count)]
    problem = label_problem(names[0])
    if problem is not None:
        raise DeviceSpecError(f"{where}: device {names[0]!r}"
                              + (f" (name {name!r} with count {count})" if count > 1 else "")
                              + f" {problem[0]}",
                              hint=problem[1] + ("; with a count, name the kind alone (\"cuda\", "
                                                 "\"gpu\"): its copies are numbered :0, :1, …"
                                                 if count > 1 else ""))
    return [Device(name=n, memory=memory, speed=speed) for n in names]


def _spec_speed(spec: Any, profile: Profile | None, where: str, name: str) -> float:
    """Peak FLOP/s of ``spec`` over that of the spec the profile was estimated on."""
    from autopipe.profile.devices import DeviceSpec

    base = profile.meta.get("device_spec") if profile is not None else None
    if profile is None or profile.method != "estimate" or not isinstance(base, dict):
        raise DeviceSpecError(
            f"{where} ({name}): cannot derive a speed from spec {spec.name!r} for a measured profile",
            hint='add "speed": relative to the profiled device (1.0 = the same)')
    base_spec = DeviceSpec.from_json(base, source="the profile's device spec")
    return float(spec.flops_for(profile.dtype) / base_spec.flops_for(profile.dtype))
