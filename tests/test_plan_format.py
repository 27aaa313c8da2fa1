"""Tests for autopipe/plan_format.py: reading a plan file whose fields have the wrong JSON type."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from autopipe.errors import PlanError
from autopipe.partition.planner import plan_profile
from autopipe.partition.synthetic import synthetic_profile
from autopipe.plan_format import CHECKSUMS, Plan, check_as_written


@pytest.fixture(scope="module")
def plan_json() -> dict[str, Any]:
    data = plan_profile(synthetic_profile(30, seed=1), num_stages=2, method="dp").to_json()
    assert data["baselines"] and data["stages"][0]["sends"] and data["predicted"]["peak_memory"]
    return data


def _set(*keys: Any, value: Any = None) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        for k in keys[:-1]:
            data = data[k]
        data[keys[-1]] = value
    return edit


def _first_baseline(data: dict[str, Any]) -> None:
    data["baselines"][next(iter(data["baselines"]))]["stage_nodes"] = None


@pytest.mark.parametrize(("edit", "field"), [
    (_set("baselines"), "'baselines' is null, expected an object"),
    (_set("options"), "'options' is null, expected an object"),
    (_set("predicted"), "'predicted' is null, expected an object"),
    (_set("predicted", "peak_memory"), "'predicted.peak_memory' is null, expected an array"),
    (_set("solver"), "'solver' is null, expected an object"),
    (_set("devices"), "'devices' is null, expected an array"),
    (_set("devices", 0), "'devices[0]' is null, expected an object"),
    (_set("stages"), "'stages' is null, expected an array"),
    (_set("stages", 1), "'stages[1]' is null, expected an object"),
    (_set("stages", 0, "memory"), "'stages[0].memory' is null, expected an object"),
    (_set("stages", 0, "sends"), "'stages[0].sends' is null, expected an array"),
    (_set("stages", 0, "sends", 0), "'stages[0].sends[0]' is null, expected an object"),
    (_set("stages", 0, "nodes", value="x"), "'stages[0].nodes' is string, expected an array"),
    (_set("stages", 0, "recompute", value=[None]), "'stages[0].recompute[0]' is null, expected an array"),
    (_set("data_parallel", value=[]), "'data_parallel' is array, expected an object"),
    (_first_baseline, "stage_nodes' is null, expected an array"),
    # until 2026-12-07 these were read as they were, and failed later in arithmetic or formats
    (_set("stages", 0, "forward_s", value="fast"), "'stages[0].forward_s' is string 'fast', expected a finite"),
    (_set("stages", 0, "memory", "total", value=True), "'stages[0].memory.total' is true, expected an integer"),
    (_set("stages", 0, "nodes", value=[1]), "'stages[0].nodes[0]' is number 1, expected a string"),
    (_set("stages", 0, "sends", 0, "to_stage", value="1"), "'stages[0].sends[0].to_stage' is string '1'"),
    (_set("microbatches", value=4.5), "'microbatches' is number 4.5, expected an integer"),
    (_set("solver", "gap", value=None), "'solver.gap' is null, expected a finite number"),
    (_set("predicted", "peak_memory", value=["a"]), "'predicted.peak_memory[0]' is string 'a'"),
    (_set("devices", 0, "memory", value="80GiB"), "'devices[0].memory' is string '80GiB', expected an integer"),
    (_set("stages", 0, "extra", value=1), "'stages[0].extra' is not a field of stages[0]"),
    (_set("stages", 0, "rank", value="0"), "'stages[0].rank' is string '0', expected an integer"),
])
def test_a_field_of_the_wrong_type_is_a_malformed_plan_naming_it(
        plan_json: dict[str, Any], tmp_path: Path, edit: Callable[[dict[str, Any]], None],
        field: str) -> None:
    data = json.loads(json.dumps(plan_json))
    edit(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(PlanError, match="malformed plan") as info:
        Plan.load(path)
    assert field in info.value.message and str(path) in info.value.message
    assert info.value.hint


def test_absent_optional_fields_still_read(plan_json: dict[str, Any]) -> None:
    data = json.loads(json.dumps(plan_json))
    for key in ("baselines", "options"):
        del data[key]
    for stage in data["stages"]:
        for key in ("sends", "recompute", "remade"):
            stage.pop(key, None)
    plan = Plan.from_json(data)
    assert plan.baselines == {} and plan.options == {} and plan.stages[0].sends == ()


def test_a_plan_edited_by_hand_is_named_by_its_part(plan_json: dict[str, Any]) -> None:
    """[Note: a plan edited by hand]: the checksums name the part that changed; a stage's
    device may change; a plan written before the checksums passes."""
    data = json.loads(json.dumps(plan_json))
    check_as_written(data)  # as written
    data["stages"][0]["device"] = "cuda:5"
    check_as_written(data)
    data["stages"][1]["nodes"] = data["stages"][1]["nodes"][::-1]
    with pytest.raises(PlanError, match=r"stages\[1\] differs from what `autopipe plan` wrote"):
        check_as_written(data, "p.json")
    data = json.loads(json.dumps(plan_json))
    data["stages"].pop()
    with pytest.raises(PlanError, match="has 1 stages, not the 2 it was written with"):
        check_as_written(data)
    data = json.loads(json.dumps(plan_json))
    data["predicted"]["iteration_s"] /= 2
    with pytest.raises(PlanError, match="predicted differs"):
        check_as_written(data)
    del data[CHECKSUMS]
    check_as_written(data)


def test_a_written_plan_reads_back_equal(plan_json: dict[str, Any]) -> None:
    plan = Plan.from_json(json.loads(json.dumps(plan_json)))
    assert plan.to_json() == plan_json


@pytest.mark.parametrize(("edit", "field", "hint"), [
    # until 2026-12-07 these were read as they were: show and check printed the plan, and
    # check --spec divided by the speed (ZeroDivisionError) or priced the label as a GPU
    (_set("devices", 0, "speed", value=0), "'devices[0]': device 'd0' has speed 0.0, not a positive number",
     "relative to the profiled device"),
    (_set("devices", 1, "speed", value=-2.0), "'devices[1]': device 'd1' has speed -2.0", "e.g. 1.0"),
    (_set("devices", 0, "memory", value=-5), "device 'd0' has memory -5, not a size in bytes", "0 = no limit"),
    (_set("devices", 0, "name", value=""), "'devices[0]': device '' has no name", "name it"),
    (_set("devices", 0, "name", value="mps"), "device 'mps' is torch's 'mps' device type, which autopipe "
     "does not run on", '"cuda:N"'),
    (_set("devices", 1, "name", value="cuda:0:1"), "device 'cuda:0:1' has the cuda index '0:1', not a number",
     '"cuda:N"'),
    (_set("stages", 1, "device", value="xla:0"), "stages[1].device 'xla:0' is torch's 'xla' device type",
     '"cpu:N"'),
])
def test_a_device_autopipe_cannot_run_or_price_is_refused_naming_the_field(
        plan_json: dict[str, Any], tmp_path: Path, edit: Callable[[dict[str, Any]], None],
        field: str, hint: str) -> None:
    data = json.loads(json.dumps(plan_json))
    data["devices"] = [{"name": "d0", "memory": 0, "speed": 1.0}, {"name": "d1", "memory": 0, "speed": 1.0}]
    edit(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(PlanError) as info:
        Plan.load(path)
    assert field in info.value.message and str(path) in info.value.message, info.value.message
    assert info.value.hint and hint in info.value.hint, info.value.hint


def test_a_label_of_your_own_or_a_numbered_cpu_still_reads(plan_json: dict[str, Any]) -> None:
    """[Note: device labels]: only torch's other device types and malformed indices are refused."""
    data = json.loads(json.dumps(plan_json))
    data["devices"] = [{"name": "gpu-a", "memory": 0, "speed": 0.5}, {"name": "cpu:3", "memory": 1, "speed": 2}]
    data["stages"][0]["device"], data["stages"][1]["device"] = "h100:7", "cuda"
    plan = Plan.from_json(data)
    assert [d.name for d in plan.devices] == ["gpu-a", "cpu:3"] and plan.devices[1].is_cpu
