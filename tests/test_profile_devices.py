"""Tests for autopipe/profile/devices.py: shipped specs, user specs, bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autopipe.errors import DeviceSpecError
from autopipe.profile import DeviceSpec, builtin_device_specs, load_device_spec


def test_shipped_specs() -> None:
    assert {"a100", "h100", "h200"} <= set(builtin_device_specs())
    for name in builtin_device_specs():
        spec = load_device_spec(name)
        assert spec.name == name
        assert "datasheet" in spec.source
        assert spec.flops_for("bfloat16") > spec.flops_for("float32") > 0
        assert spec.memory_bandwidth > 1e12 and spec.link_bandwidth > 1e11
        assert spec.memory >= 80e9


def test_h100_numbers() -> None:
    h100 = load_device_spec("H100")  # names are case-insensitive
    assert h100.peak_flops["bfloat16"] == pytest.approx(989.4e12)
    assert h100.memory_bandwidth == pytest.approx(3.35e12)
    assert load_device_spec("h200").memory > h100.memory


def test_user_spec_from_path(tmp_path: Path) -> None:
    path = tmp_path / "mygpu.json"
    path.write_text(json.dumps({
        "schema": "autopipe.device/1", "name": "mygpu", "peak_flops": {"float32": 1e13},
        "memory_bandwidth": 1e12, "memory": "24GiB", "link_bandwidth": 32e9, "vendor": "acme"}))
    spec = load_device_spec(str(path))
    assert spec.memory == 24 * 2**30 and spec.kernel_overhead_s == 0.0
    assert spec.extra == {"vendor": "acme"}
    spec.save(tmp_path / "copy.json")
    assert load_device_spec(str(tmp_path / "copy.json")) == spec


def test_the_libraries_workspaces() -> None:
    """[Note: the libraries' workspaces]: two threads' cuBLAS and cuBLASLt workspaces, 32 MiB
    and 1 MiB each on Hopper, 8 MiB + 128 KiB and 1 MiB elsewhere; a user's spec may give
    a size, none means 0; an estimate carries the spec's."""
    assert load_device_spec("h100").library_bytes == load_device_spec("h200").library_bytes == 2 * 33 * 2**20
    assert load_device_spec("a100").library_bytes == 2 * (8 * 2**20 + 128 * 2**10 + 2**20)
    data = load_device_spec("h100").to_json()
    assert DeviceSpec.from_json({**data, "library_bytes": "18MiB"}).library_bytes == 18 * 2**20
    bare = DeviceSpec.from_json({k: v for k, v in data.items() if k != "library_bytes"})
    assert bare.library_bytes == 0 and "library_bytes" not in bare.to_json()


def test_dtype_lookup() -> None:
    spec = load_device_spec("a100")
    assert spec.flops_for("torch.float16") == spec.peak_flops["float16"]
    with pytest.raises(DeviceSpecError, match="a100 has no peak_flops for int8"):
        spec.flops_for("int8")


@pytest.mark.parametrize(("change", "match"), [
    ({"memory_bandwidth": -1}, "memory_bandwidth = -1.0 is not a positive number"),
    ({"peak_flops": {}}, "peak_flops is empty"),
    ({"peak_flops": [1]}, "peak_flops is a list"),
    ({"memory": "lots"}, "memory: cannot read size 'lots'"),
    ({"link_bandwidth": "fast"}, "malformed device spec"),
    ({"kernel_overhead_s": -1}, "kernel_overhead_s = -1.0"),
    ({"dispatch_forward_s": -1e-6}, "dispatch_forward_s = -1e-06 is not a host time"),
    ({"efficiency": {"matmul": {"float32": 1.5}}}, r"efficiency\['matmul'\]\['float32'\] = 1.5"),
    ({"efficiency": {"gemm": {"float32": 0.5}}}, "unknown kernel class 'gemm'"),
    ({"efficiency": {"matmul": 0.5}}, "efficiency is not an object of objects"),
    ({"call_overhead_s": {"convolution": -1}}, r"call_overhead_s\['convolution'\] = -1.0"),
    ({"library_bytes": "some"}, "library_bytes: cannot read size 'some'"),
    ({"library_bytes": -5}, "library_bytes: size -5 is negative"),
])
def test_bad_values(tmp_path: Path, change: dict[str, object], match: str) -> None:
    data = load_device_spec("h100").to_json() | change
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DeviceSpecError, match=match) as info:
        load_device_spec(str(path))
    assert str(path) in info.value.message


def test_missing_fields_and_schema(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"schema": "autopipe.device/1", "name": "x"}))
    with pytest.raises(DeviceSpecError, match="missing peak_flops, memory_bandwidth"):
        load_device_spec(str(path))
    path.write_text(json.dumps({"schema": "autopipe.plan/1"}))
    with pytest.raises(DeviceSpecError, match="schema is 'autopipe.plan/1'"):
        load_device_spec(str(path))
    path.write_text("{not json")
    with pytest.raises(DeviceSpecError, match="not valid JSON"):
        load_device_spec(str(path))
    with pytest.raises(DeviceSpecError, match="no such file"):
        load_device_spec(str(tmp_path / "none.json"))


def test_unknown_name() -> None:
    with pytest.raises(DeviceSpecError, match="unknown device spec 'v100'") as info:
        load_device_spec("v100")
    assert info.value.hint is not None and "h100" in info.value.hint


def test_constructor_checks() -> None:
    with pytest.raises(DeviceSpecError, match="empty name"):
        DeviceSpec(name="", peak_flops={"float32": 1.0}, memory_bandwidth=1.0, memory=1,
                   link_bandwidth=1.0)


def test_host_and_kernel_figures() -> None:
    """The H200's host dispatch is what the GPU suite measured; H100 and A100 default to it."""
    h200 = load_device_spec("h200")
    assert h200.dispatch_forward_s == pytest.approx(18.6e-6)
    assert h200.dispatch_backward_s == pytest.approx(14.4e-6)
    for name in ("h100", "a100"):
        spec = load_device_spec(name)
        assert (spec.dispatch_forward_s, spec.dispatch_backward_s) == (h200.dispatch_forward_s,
                                                                       h200.dispatch_backward_s)
    assert h200.dispatch_s("forward") > h200.dispatch_s("backward_input") > 0
    # fp32 convolutions on the TF32 units at the measured fraction of their peak
    assert h200.kernel_rate("convolution", "float32", tf32=True) == pytest.approx(0.4 * 494.7e12)
    assert h200.kernel_rate("convolution", "float32") == pytest.approx(66.9e12)
    assert h200.kernel_rate("matmul", "float32") == pytest.approx(0.68 * 66.9e12)
    assert h200.kernel_rate("other", "bfloat16") == pytest.approx(989.4e12)
    assert h200.bandwidth_for("group_norm", "bfloat16") == pytest.approx(0.042 * 4.8e12)
    assert h200.bandwidth_for("matmul", "bfloat16") == h200.memory_bandwidth
    assert h200.overhead_for("convolution") == pytest.approx(150e-6) and h200.overhead_for("matmul") == 0
    assert DeviceSpec.from_json(h200.to_json()) == h200
