"""Tests for autopipe/schedule/runtime_costs.py: the runtime's and a model's extra costs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autopipe.errors import PlanError
from autopipe.schedule.runtime_costs import SCHEMA, ModelCosts, RuntimeCosts


def test_runtime_costs_round_trip_through_json(tmp_path: Path) -> None:
    costs = RuntimeCosts(forward_overhead_s=1e-4, send_latency_s=5e-5, link_bandwidth=2e9,
                         optimizer_tensor_s=3e-5, optimizer_element_s=4e-9)
    costs.save(tmp_path / "c.json")
    assert json.loads((tmp_path / "c.json").read_text())["schema"] == SCHEMA
    assert RuntimeCosts.load(tmp_path / "c.json") == costs


def test_send_and_optimizer_times() -> None:
    costs = RuntimeCosts(send_latency_s=0.5, link_bandwidth=100.0, optimizer_tensor_s=2.0,
                         optimizer_element_s=0.25)
    assert costs.send_s(50) == pytest.approx(1.0)
    assert RuntimeCosts().send_s(50) is None
    assert costs.optimizer_s(3, 8) == pytest.approx(8.0)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("send_latency_s", "fast", "RuntimeCosts.send_latency_s is 'fast', not a number"),
    ("link_bandwidth", None, "RuntimeCosts.link_bandwidth is None, not a number"),
    ("forward_overhead_s", True, "RuntimeCosts.forward_overhead_s is True, not a number"),
    ("optimizer", 3, "RuntimeCosts.optimizer is 3, not a string"),
])
def test_a_costs_file_with_a_field_of_the_wrong_type_is_malformed(
        tmp_path: Path, field: str, value: object, message: str) -> None:
    path = tmp_path / "costs.json"
    RuntimeCosts(link_bandwidth=2e9).save(path)
    data = json.loads(path.read_text())
    data[field] = value
    path.write_text(json.dumps(data))
    with pytest.raises(PlanError, match="malformed runtime costs") as info:
        RuntimeCosts.load(path)
    assert message in info.value.message and str(path) in info.value.message
    assert info.value.hint


def test_a_zero_link_bandwidth_means_unmeasured_and_keeps_the_plans_send_times(tmp_path: Path) -> None:
    path = tmp_path / "costs.json"
    RuntimeCosts(link_bandwidth=0.0).save(path)
    assert RuntimeCosts.load(path).send_s(100) is None


def test_model_costs_per_stage_figures_must_be_numbers() -> None:
    with pytest.raises(PlanError, match="ModelCosts.stage_forward_s is \\(0.1, 'x'\\), not a number"):
        ModelCosts(stage_forward_s=(0.1, "x"))  # type: ignore[arg-type]
    with pytest.raises(PlanError, match="ModelCosts.stage_forward_s is 0.1, not a list"):
        ModelCosts(stage_forward_s=0.1)  # type: ignore[arg-type]


def test_bad_files_and_values_are_plan_errors(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text(json.dumps({"schema": SCHEMA, "speed": 3}))
    with pytest.raises(PlanError, match="malformed runtime costs"):
        RuntimeCosts.load(tmp_path / "x.json")
    with pytest.raises(PlanError, match="no such file"):
        RuntimeCosts.load(tmp_path / "missing.json")
    with pytest.raises(PlanError, match="RuntimeCosts.send_latency_s is -1.0"):
        RuntimeCosts(send_latency_s=-1.0)
    with pytest.raises(PlanError, match="lengths \\[2, 3\\]"):
        ModelCosts(stage_param_tensors=(1, 2), stage_param_elements=(1, 2, 3))
    with pytest.raises(PlanError, match="ModelCosts.stage_optimizer_s is \\(0.1, nan\\)"):
        ModelCosts(stage_optimizer_s=(0.1, float("nan")))
