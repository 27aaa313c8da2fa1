"""Tests for autopipe/partition/devices.py: memory limits and devices files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autopipe.errors import DeviceSpecError
from autopipe.partition.devices import resolve_devices
from autopipe.partition.synthetic import synthetic_profile
from autopipe.plan_format import Device
from autopipe.profile.devices import load_device_spec


def test_one_limit_for_all() -> None:
    devices = resolve_devices(3, memory_limit="2GiB")
    assert devices == tuple(Device(name=f"cuda:{i}", memory=2 << 30) for i in range(3))
    assert all(d.memory == 0 for d in resolve_devices(2))  # 0 = unlimited


def test_file_with_count_and_spec(tmp_path: Path) -> None:
    path = tmp_path / "devices.json"
    path.write_text(json.dumps({"devices": [{"name": "big", "memory": "80GiB", "speed": 2},
                                            {"name": "a100", "spec": "a100", "count": 2}]}))
    prof = synthetic_profile(4)
    prof = type(prof)(**{**{f: getattr(prof, f) for f in prof.__slots__},  # type: ignore[attr-defined]
                         "method": "estimate", "dtype": "bfloat16",
                         "meta": {"device_spec": load_device_spec("h100").to_json()}})
    devices = resolve_devices(3, devices=str(path), profile=prof)
    assert [d.name for d in devices] == ["big", "a100:0", "a100:1"]
    a100, h100 = load_device_spec("a100"), load_device_spec("h100")
    assert devices[1].memory == a100.memory
    assert devices[1].speed == pytest.approx(a100.flops_for("bfloat16") / h100.flops_for("bfloat16"))


@pytest.mark.parametrize("entries, message", [
    ([{"name": "a", "memory": 1}], "lists 1 devices but the plan has 2 stages"),
    ([{"name": "a", "memory": 1, "count": 0}, {"name": "b", "memory": 1}], "count"),
    ([{"name": "a", "memory": "lots"}, {"name": "b", "memory": 1}], "memory"),
    ([{"memory": 1}, {"name": "b", "memory": 1}], "no name"),
    (["gpu0", "gpu1"], "not an object"),
    # until 2026-12-07 these made plans that train ran elsewhere than the planner priced them
    ([{"name": "mps", "memory": 1}, {"name": "b", "memory": 1}], "device 'mps' is torch's 'mps' device type"),
    ([{"name": "cuda:0", "memory": 1, "count": 2}], r"device 'cuda:0:0' \(name 'cuda:0' with count 2\) has the cuda"),
])
def test_bad_entries(entries: list[object], message: str) -> None:
    with pytest.raises(DeviceSpecError, match=message) as info:
        resolve_devices(2, devices=entries)  # type: ignore[arg-type]
    assert info.value.hint


def test_no_devices_is_not_a_plan_of_no_stages() -> None:
    with pytest.raises(DeviceSpecError, match="lists 0 devices") as info:
        resolve_devices(2, devices=[])
    assert info.value.hint == 'list 2 devices ("count" repeats one)'  # it offered "or plan 0 stages"


def test_limit_and_devices_together() -> None:
    with pytest.raises(DeviceSpecError, match="not both|both"):
        resolve_devices(2, memory_limit="1GiB", devices=[Device(name="a", memory=1)] * 2)


def test_a_device_of_no_speed_is_refused_from_python_too() -> None:
    """``autopipe.plan(devices=[Device(...)])`` took it as it was, and divided by it."""
    from autopipe.errors import PlanError

    with pytest.raises(PlanError, match="device 'a' has speed 0, not a positive number") as info:
        Device(name="a", memory=0, speed=0)
    assert info.value.hint and "relative to the profiled device" in info.value.hint
