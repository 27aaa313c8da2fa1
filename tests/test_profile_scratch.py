"""A call's scratch ([Note: a call's scratch]): measured per node where an allocator has
counters, written only where there is some, and held by the stage on top of its activations."""

from __future__ import annotations

import importlib
import json

import pytest
import torch
from torch import nn

from autopipe import trace
from autopipe.partition import plan_profile
from autopipe.plan_format import Plan
from autopipe.profile import measure
from autopipe.profile.gradients import gradients_around
from autopipe.profile.profile import Profile
from tests.scratch_ops import COUNTERS, GLUE_SCRATCH, scratchy

# the module, not the function ``autopipe.profile.measure`` that shadows it
measure_module = importlib.import_module("autopipe.profile.measure")


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(16, 16)
        self.b = nn.Linear(16, 16)
        self.c = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(self.b(scratchy(self.a(x))))


def _profile(monkeypatch: pytest.MonkeyPatch | None) -> Profile:
    if monkeypatch is not None:  # the CPU's stand-in for CUDA's allocator counters
        monkeypatch.setattr(measure_module, "counters_for", lambda device: COUNTERS)
    torch.manual_seed(0)
    model = Net()
    x = torch.randn(4, 16)
    return measure(trace(model, (x,)), (x,), warmup=1, repeats=2, progress=False)


def _scratchy_node(p: Profile) -> str:
    (name,) = [n.name for n in p.nodes if "scratchy" in n.target]
    return name


def test_measure_records_the_scratch_of_each_nodes_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    p = _profile(monkeypatch)
    node = _scratchy_node(p)
    # its forward took 3 MiB, its backward 5 MiB in a call and 7 MiB between calls: the most
    assert {n.name: n.scratch_bytes for n in p.nodes if n.scratch_bytes} == {node: GLUE_SCRATCH}
    data = p.to_json()
    assert [n["name"] for n in data["nodes"] if "scratch_bytes" in n] == [node]
    assert Profile.from_json(json.loads(json.dumps(data))) == p


def test_no_counters_no_scratch() -> None:
    p = _profile(None)  # the CPU: no allocator counters
    assert all(n.scratch_bytes == 0 for n in p.nodes)
    assert "scratch_bytes" not in json.dumps(p.to_json())  # files as they were


def test_the_stage_holds_its_largest_scratch_on_top_of_its_activations(
        monkeypatch: pytest.MonkeyPatch) -> None:
    p = _profile(monkeypatch)
    node = _scratchy_node(p)
    plain = Profile.from_json({**p.to_json(), "nodes": [
        {k: v for k, v in n.items() if k != "scratch_bytes"} for n in p.to_json()["nodes"]]})
    plan, before = (plan_profile(q, num_stages=2, microbatches=2) for q in (p, plain))
    assert [s.nodes for s in plan.stages] == [s.nodes for s in before.stages]  # no limit: the same cuts
    held = next(i for i, s in enumerate(plan.stages) if node in s.nodes)
    # the scratchy call holds its scratch and the gradients around it, the most of its stage's
    around = gradients_around(p, in_place=True)  # CPU ranks add the linear layers' in place
    for i, (s, was) in enumerate(zip(plan.stages, before.stages)):
        grads = max(around[n] for n in s.nodes)
        assert was.memory.workspace == max(grads, s.memory.workspace if i != held else 0)
        if i == held:
            assert s.memory.workspace == GLUE_SCRATCH + around[node]
        extra = s.memory.workspace - was.memory.workspace
        assert s.memory.total == was.memory.total + extra
        assert plan.predicted.peak_memory[i] == before.predicted.peak_memory[i] + extra
    assert Plan.from_json(plan.to_json()).stages[held].memory.workspace == GLUE_SCRATCH + around[node]
