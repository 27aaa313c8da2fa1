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
from autopipe.plan_format import Plan


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
