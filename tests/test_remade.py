"""Values made again instead of sent ([Note: values made again] in autopipe/trace/remade.py):
which values may be (the trace), what the planner charges for them and records (the
problem, the costs, the plan), and how profiles and plans keep them. The runtime's side is
in tests/test_runtime_split.py and the training cases of tests/runtime_cases.py."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import autopipe
from autopipe.errors import PlanError
from autopipe.partition.coarsen import coarsen
from autopipe.partition.costs import boundary_bytes, evaluate, violations
from autopipe.partition.ilp import _Model
from autopipe.partition.planner import plan_profile
from autopipe.partition.problem import Config, Problem, from_profile
from autopipe.partition.windows import ancestors, pinned_windows
from autopipe.plan_format import Device, Plan
from autopipe.profile import estimate
from autopipe.profile.profile import NodeProfile, Profile

from .conftest import example_spec
from .mip_clock import Clock, to_the_limit
from .partition_cases import check_rows
from .runtime_cases import TINY


class Tables(nn.Module):
    """A position table from a buffer (may be made again), next to what may not be: random
    noise, a tensor written in place, a parameter's value, and what reads the input."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.register_buffer("scale", torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pos = torch.cos(self.scale * 2.0)
        noise = torch.rand_like(self.scale)
        ones = self.scale.clone()
        ones.add_(1.0)
        total = self.lin.weight.sum(0)
        return self.lin(x) * pos + noise + ones + total + x.new_ones(4)


def test_only_values_of_no_input_parameter_draw_or_write_may_be_made_again() -> None:
    x = torch.randn(2, 4)
    graph = autopipe.trace(Tables(), (x,), frontend="export")
    remakable = {n.target for n in graph.nodes if n.remakable}
    assert remakable == {"aten.mul.Tensor", "aten.cos.default"}, [(n.name, n.target) for n in graph.nodes]
    # symbolic_trace runs what reads no proxy while it traces: the table, the noise and the
    # written tensor become constants, which every stage that reads them holds a copy of
    fx = autopipe.trace(Tables(), (x,), frontend="fx")
    assert not any(n.remakable for n in fx.nodes)


@pytest.fixture(scope="module")
def llama() -> tuple[autopipe.Graph, Profile]:
    spec = example_spec("llama", **TINY["llama"])
    graph = autopipe.trace(spec.model, spec.example_inputs)
    return graph, estimate(graph, spec.example_inputs, progress=False)


def test_llamas_mask_and_rotary_tables_may_be_made_again(llama: tuple[autopipe.Graph, Profile]) -> None:
    graph, _ = llama
    by_name = graph.by_name
    attention = [n for n in graph.gm.graph.nodes
                 if n.target is torch.ops.aten.scaled_dot_product_attention.default]
    assert attention and all(by_name[str(n.args[3])].remakable for n in attention)
    tables = [n for n in graph.nodes if n.target in ("aten.cos.default", "aten.sin.default")]
    assert tables and all(n.remakable for n in tables)
    # nothing that reads the tokens or a weight
    reads = {n.name for n in graph.nodes if n.op == "placeholder" or n.params or n.shared_params}
    for n in graph.nodes:
        if set(n.inputs) & reads:
            reads.add(n.name)
    assert not any(by_name[r].remakable for r in reads)


def _config(remake: str, bw: float = 1e6, p: int = 2) -> Config:
    return Config(num_stages=p, microbatches=4, schedule="1f1b", link_bandwidth=bw, remake=remake,
                  devices=tuple(Device(name=f"d{i}", memory=0, speed=0.5) for i in range(p)))


def _middle_cut(problem: Problem) -> list[int]:
    """Stage of each block for a cut between the two decoder layers (after ``add_8``...)."""
    half = problem.node_order.index(next(n for n in problem.node_order if n.startswith("add_")
                                         and int(n.split("_")[1]) >= 8))
    cut = next(i for i, b in enumerate(problem.blocks) if problem.node_order.index(b.nodes[-1]) >= half)
    return [0 if i <= cut else 1 for i in range(problem.size)]


def test_a_value_made_again_costs_its_reader_the_forward_and_the_cut_no_bytes(
        llama: tuple[autopipe.Graph, Profile]) -> None:
    _, profile = llama
    sent, remade = from_profile(profile, _config("none")), from_profile(profile, _config("all"))
    stage_of = _middle_cut(sent)
    again = remade.remade_in(stage_of)
    assert not again[0] and again[1], again
    by_name = profile.by_name
    crossing = [v for v in remade.values if v.remade and stage_of[v.src] == 0 and stage_of[v.dsts[-1]] == 1]
    assert crossing
    assert set(again[1]) == {n for v in crossing for n in v.remade}
    # exact arithmetic: the cut loses the values' bytes, stage 1 gains their nodes' forward
    assert boundary_bytes(sent, stage_of)[0] - boundary_bytes(remade, stage_of)[0] == sum(
        by_name[v.node].output_bytes for v in crossing)
    a, b = evaluate(sent, stage_of), evaluate(remade, stage_of)
    assert b.stages[0].forward_s == a.stages[0].forward_s
    extra = sum(by_name[n].forward_s for n in again[1]) / 0.5
    assert math.isclose(b.stages[1].forward_s - a.stages[1].forward_s, extra, rel_tol=1e-9)
    assert extra > 0


@pytest.mark.parametrize("stages", [2, 3])
def test_the_ilp_prices_what_its_readers_make_again_as_the_evaluation_does(
        llama: tuple[autopipe.Graph, Profile], stages: int) -> None:
    """At any partition, the MIP's forward of each stage counts the nodes it makes again, as
    ``evaluate`` does (exact arithmetic), and so does its objective, once the partition's
    critical path is among its rows."""
    _, profile = llama
    problem = coarsen(from_profile(profile, _config("all", p=stages)), 40)
    assert problem.remakes()
    model = _Model(problem, ancestors(problem), *pinned_windows(problem))
    assert model.remake_vars
    seen = 0
    for first in range(1, problem.size - 1, 3):
        # the blocks' order is topological: any cut points make a partition
        cuts = [first] if stages == 2 else [first, min(problem.size - 1, first + (problem.size - first) // 2)]
        stage_of = [sum(b >= c for c in cuts) for b in range(problem.size)]
        if violations(problem, stage_of):
            continue
        ev = evaluate(problem, stage_of)
        model.add_path(ev.critical)
        values = model.warm(stage_of)
        for s in range(stages):
            assert math.isclose(model.forward[s].value(values) * model.tau, ev.stages[s].forward_s,
                                rel_tol=1e-9, abs_tol=1e-15), (stage_of, s)
        assert math.isclose(model.objective.value(values) * model.tau, ev.objective_s, rel_tol=1e-9)
        check_rows(model, values, ev)
        seen += bool(any(problem.remade_in(stage_of)))
    assert seen >= 3


def test_auto_makes_again_where_faster_than_the_link(llama: tuple[autopipe.Graph, Profile]) -> None:
    _, profile = llama
    assert not any(v.remade for v in from_profile(profile, _config("auto", bw=math.inf)).values)
    every = from_profile(profile, _config("all"))
    slow = from_profile(profile, _config("auto", bw=1.0))  # a byte a second: every value
    assert {v.node for v in slow.values if v.remade} == {v.node for v in every.values if v.remade} != set()
    by_name = profile.by_name
    for bw in (1e6, 1e15):
        # a value is made again where its nodes' forward costs less than its bytes over the
        # link, and so is every value those nodes make; no other
        faster = {v.node: v.remade for v in every.values if v.remade
                  and sum(by_name[n].forward_s for n in v.remade) / 0.5 < by_name[v.node].output_bytes / bw}
        want = {n for nodes in faster.values() for n in nodes} & {v.node for v in every.values}
        chosen = {v.node for v in from_profile(profile, _config("auto", bw=bw)).values if v.remade}
        assert chosen == want, bw
    assert len(faster) < len([v for v in every.values if v.remade])  # fast links send some


def test_the_plan_lists_what_each_stage_makes_again_and_sends_the_rest(
        llama: tuple[autopipe.Graph, Profile], tmp_path: Path) -> None:
    graph, profile = llama
    plan = plan_profile(profile, num_stages=2, microbatches=4, remake="all")
    assert plan.options["remake"] == {"mode": "all"}
    remade = {n for s in plan.stages for n in s.remade}
    assert remade and all(graph.by_name[n].remakable for n in remade)
    assert not any(x.tensor in remade for s in plan.stages for x in s.sends)
    plan.save(tmp_path / "p.json")
    assert Plan.load(tmp_path / "p.json") == plan
    none = plan_profile(profile, num_stages=2, microbatches=4, remake="none")
    assert not any(s.remade for s in none.stages)
    assert [bool(s.get("remade")) for s in plan.to_json()["stages"]] == [bool(s.remade) for s in plan.stages]
    assert all("remade" not in s for s in none.to_json()["stages"])  # plans without any read as before
    with pytest.raises(PlanError, match="remake mode"):
        plan_profile(profile, num_stages=2, microbatches=4, remake="some")


def test_profiles_keep_the_mark_and_old_ones_take_it_from_the_model(
        llama: tuple[autopipe.Graph, Profile], tmp_path: Path) -> None:
    graph, profile = llama
    marked = [n.name for n in profile.nodes if n.remakable]
    assert marked == [n.name for n in graph.nodes if n.remakable]
    # and those without a gradient ([Note: values without a gradient]): more than those
    gradless = [n.name for n in profile.nodes if n.no_grad]
    assert gradless == [n.name for n in graph.nodes if n.no_grad] and set(marked) < set(gradless)
    profile.save(tmp_path / "p.json")
    data = json.loads((tmp_path / "p.json").read_text())
    assert [n["name"] for n in data["nodes"] if "remakable" in n] == marked
    assert [n["name"] for n in data["nodes"] if "no_grad" in n] == gradless
    assert Profile.load(tmp_path / "p.json") == profile
    old = dataclasses.replace(profile, nodes=tuple(dataclasses.replace(n, remakable=False, no_grad=False)
                                                   for n in profile.nodes))
    assert old.with_marks(graph) == profile
    assert profile.with_marks(graph) is profile


def test_auto_is_never_slower_than_sending_every_value(llama: tuple[autopipe.Graph, Profile]) -> None:
    """Which values are made again is decided before the ILP, value by value: where the plan
    that sends every value is faster, that plan is given."""
    _, profile = llama
    for bw in (1e3, 1e5, 1e7):
        sent = plan_profile(profile, num_stages=2, microbatches=4, remake="none", link_bandwidth=bw)
        auto = plan_profile(profile, num_stages=2, microbatches=4, link_bandwidth=bw)
        assert auto.predicted.iteration_s <= sent.predicted.iteration_s * (1 + 1e-9), bw
        info = auto.options["remake"]  # the Llama has values to make again at these links
        if "sent_s" in info:  # compared, and making again won
            assert info["mode"] == "auto" and info["sent_s"] == pytest.approx(sent.predicted.iteration_s)
        else:  # compared, and sending won: no stage makes a value again
            assert not any(s.remade for s in auto.stages) and info["remade_s"] >= auto.predicted.iteration_s


def _heavy_reader() -> Profile:
    """A chain x → a → b → c → d and a value m of no input (0.9 s to make, 1,000 bytes)
    read by c, the heaviest node."""
    chain = ["x", "a", "b", "c", "d"]

    def node(name: str, **kw: object) -> NodeProfile:
        base = dict(name=name, op="call_function", target="f", module=name, forward_s=1.0,
                    backward_input_s=2.0, backward_weight_s=0.0, activation_bytes=8, output_bytes=8,
                    param_bytes=0)
        return NodeProfile(**{**base, **kw})  # type: ignore[arg-type]

    nodes = (node("x", op="placeholder", target="x", module="", forward_s=0.0, backward_input_s=0.0,
                  activation_bytes=0),
             node("m", forward_s=0.9, backward_input_s=0.0, activation_bytes=0, output_bytes=1000,
                  remakable=True),
             *(node(n, forward_s=f, backward_input_s=2 * f) for n, f in zip(chain[1:], (1.0, 1.0, 2.0, 1.0))),
             NodeProfile(name="output", op="output", target="output", module="", forward_s=0.0,
                         backward_input_s=0.0, backward_weight_s=0.0, activation_bytes=0, output_bytes=0,
                         param_bytes=0, is_tensor=False))
    edges = (*((u, v, 8) for u, v in itertools.pairwise([*chain, "output"])), ("m", "c", 1000))
    return Profile(device="t", dtype="float32", microbatch_shape=[[1]], nodes=nodes, edges=edges, params={})


def test_auto_compares_with_sending_even_where_no_stage_makes_a_value_again() -> None:
    """A value cheaper to make again than to send one way (0.9 s against 1 s), read by a
    heavy node: making it again there slows the bottleneck 8 times a step, so the MIP, which
    must make it again wherever it crosses, cuts where it crosses nothing. Sending it at the
    better cut is faster still, and ``auto`` gives that plan though its own made nothing again."""
    profile = _heavy_reader()
    plans = {mode: plan_profile(profile, num_stages=2, microbatches=8, link_bandwidth=1000.0, remake=mode)
             for mode in ("none", "all", "auto")}
    assert not any(s.remade for s in plans["all"].stages)  # it cut where m crosses nothing
    assert plans["none"].predicted.iteration_s < plans["all"].predicted.iteration_s
    assert plans["auto"].predicted.iteration_s == plans["none"].predicted.iteration_s
    assert plans["auto"].options["remake"] == {"mode": "auto",
                                               "remade_s": plans["all"].predicted.iteration_s}


def test_the_plan_that_sends_every_value_shares_the_time_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """[Note: a candidate's time] in autopipe/partition/planner.py: ``auto`` solves twice,
    making values again and sending them all; with each MIP running to its limit, the first
    gets half the time limit and the second the rest (each got all of it until 2026-12-06)."""
    import autopipe.partition.planner as planner
    from autopipe.partition.ilp import solve_ilp

    clock, limits = Clock(), []
    monkeypatch.setattr(planner, "solve_ilp", to_the_limit(clock, limits, solve_ilp))
    monkeypatch.setattr(planner, "time", clock)
    plan = plan_profile(_heavy_reader(), num_stages=2, microbatches=8, link_bandwidth=1000.0, time_limit=10)
    assert limits == [5.0, 5.0] and clock.now == 10.0
    assert plan.options["remake"]["mode"] == "auto" and "remade_s" in plan.options["remake"]
