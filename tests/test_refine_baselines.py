"""Tests for [Note: a faster baseline timed] in autopipe/refine_baselines.py: where the refinement did
not settle, a baseline priced faster than the kept plan is timed beside it, and the faster kept."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

import autopipe
import autopipe.runtime.timing as timing
from autopipe.cli.main import main
from autopipe.errors import InfeasiblePlanError
from autopipe.partition.planner import plan_profile
from autopipe.plan_format import Plan
from autopipe.profile import Profile
from autopipe.refine import refine, scale_nodes, with_stage_times
from autopipe.report import format_plan
from autopipe.runtime.split import Split
from autopipe.runtime.timing import StageTimes

from .conftest import example_spec
from .test_refine import MLP, fixed_mlp

Setup = tuple[Any, autopipe.Graph, Profile]


@pytest.fixture(scope="module")
def mlp() -> Setup:
    return fixed_mlp()


def _solve(profile: Profile, method: str = "ilp") -> Plan:
    return plan_profile(profile, num_stages=2, microbatches=4, method=method)


def _timer(monkeypatch: pytest.MonkeyPatch, profile: Profile,
           later: Sequence[float]) -> list[tuple[tuple[str, ...], ...]]:
    """time_stages answers: three rounds whose slow stage alternates (4x its node sums, so
    the cuts keep moving), then each later timing at ``later[k]`` times its node sums (the
    kept cuts timed again, then whatever comes next; past its end, its last); returns the
    cuts each timing ran."""
    seen: list[tuple[tuple[str, ...], ...]] = []
    costs = profile.by_name

    def fake(split: Split, inputs: Sequence[torch.Tensor], **_: Any) -> StageTimes:
        held = [tuple(n.name for n in st.module.graph.nodes if n.name in costs and n.op != "placeholder")
                for st in split.stages]
        seen.append(tuple(tuple(n for n in h if costs[n].op.startswith("call")) for h in held))
        k = len(seen)
        scale = [4.0 if i == k % 2 else 1.0 for i in range(len(held))] if k <= 3 else [later[min(k - 4, len(later) - 1)]] * len(held)
        return StageTimes(tuple(x * sum(costs[n].forward_s for n in h) for x, h in zip(scale, held)),
                          tuple(x * sum(costs[n].backward_s for n in h) for x, h in zip(scale, held)))

    monkeypatch.setattr(timing, "time_stages", fake)
    return seen


CHOICE = {"num_stages": 2, "microbatches": 4, "schedule": "1f1b", "virtual_stages": None}
"""What refine asks a baseline planner for: the kept cuts' ranks, micro-batches, schedule, chunks."""


def _by_method(built: list[tuple[str, Plan]]) -> Any:
    def plan(profile: Profile, method: str, **choice: Any) -> Plan:
        assert choice == CHOICE
        built.append((method, _solve(profile, method)))
        return built[-1][1]
    return plan


def _cuts(plan: Plan) -> tuple[tuple[str, ...], ...]:
    return tuple(s.nodes for s in plan.stages)


def _calls(plan: Plan, profile: Profile) -> tuple[tuple[str, ...], ...]:
    """Each stage's nodes that compute (those the timer's ``seen`` lists)."""
    return tuple(tuple(n for n in s.nodes if profile.by_name[n].op.startswith("call")) for s in plan.stages)


@pytest.mark.parametrize("baseline_scale", [1.0, 5.0])
def test_a_baseline_priced_faster_is_timed_back_to_back_and_kept_only_if_it_measures_faster(
        monkeypatch: pytest.MonkeyPatch, mlp: Setup, baseline_scale: float) -> None:
    """The kept cuts re-timed at 3x and 2x their node sums (a host that slowed): dp, priced
    on the round's 1x/4x times, is faster on paper. Every baseline is planned on those
    costs; uniform and params have the kept cuts and take their step; dp is timed in the
    order A B B A. At 1x it measures faster and the plan becomes its split, at 5x it does
    not and the kept cuts stay, at the mean of their two timings. Until 2026-12-07 nothing
    was timed: the plan read slower than "dp"."""
    spec, graph, profile = mlp
    plan = _solve(profile)
    seen = _timer(monkeypatch, profile, [3.0, baseline_scale, baseline_scale, 2.0])
    built: list[tuple[str, Plan]] = []
    refined = refine(plan, profile, graph, spec.example_inputs, {}, _solve, rounds=3,
                     baseline_plan=_by_method(built))
    info = refined.options["refine"]
    timed, against = info["baseline_timed"]["dp"], info["baseline_against"]
    assert not info["converged"] and [m for m, _ in built] == ["dp", "uniform", "params"]
    assert [info["baseline_timed"][k].get("same_cuts_as") for k in ("dp", "uniform", "params")] == [
        None, "kept", "kept"]
    baseline = built[0][1]
    steps = [r["measured_step_s"] for r in info["rounds"]]
    kept_cuts = seen[steps.index(min(steps))]
    # A B B A: the kept cuts, the baseline twice, the kept cuts
    assert len(seen) == 7 and seen[3] == seen[6] == kept_cuts and seen[4] == seen[5] != kept_cuts
    assert _calls(baseline, profile) == seen[4]
    assert timed["priced_s"] < against["steps_s"][0] == info["rounds"][steps.index(min(steps))]["timed_again_step_s"]
    assert timed["steps_s"][0] == pytest.approx(timed["steps_s"][1])
    step = refined.predicted.iteration_s
    assert refined.baselines["dp"].iteration_s == pytest.approx(timed["step_s"])  # measured, either way
    assert refined.solver.method == "ilp" and refined.solver.objective_s == step
    if baseline_scale == 1.0:
        assert info["baseline_kept"] == "dp" and timed["step_s"] < against["step_s"]
        assert _cuts(refined) == _cuts(baseline) and step == pytest.approx(timed["step_s"])
        assert refined.baselines["dp"].iteration_s == pytest.approx(step)  # the plan is that split
    else:
        assert info["baseline_kept"] is None and timed["step_s"] > against["step_s"]
        assert _cuts(refined) != _cuts(baseline)
        assert _calls(refined, profile) == kept_cuts
        # the kept cuts at the mean of their two timings (3x and 2x): 2.5x their node sums
        sums = [[sum(profile.by_name[n].forward_s for n in s.nodes), sum(profile.by_name[n].backward_s
                                                                         for n in s.nodes)] for s in refined.stages]
        assert step == pytest.approx(with_stage_times(refined, [2.5 * f for f, _ in sums],
                                                      [2.5 * b for _, b in sums]).predicted.iteration_s)
        assert step == pytest.approx(against["step_s"]) != pytest.approx(against["steps_s"][0])
    # of the kept cuts: measured at their mean, the kept plan or not
    assert [refined.baselines[k].iteration_s for k in ("uniform", "params")] == pytest.approx([against["step_s"]] * 2)


def test_several_baselines_are_timed_in_a_palindrome_and_the_fastest_kept(
        monkeypatch: pytest.MonkeyPatch, mlp: Setup) -> None:
    """The kept cuts re-timed at 10x: every baseline is priced faster. dp and uniform
    (planned here on other cuts) are timed kept, dp, uniform, uniform, dp, kept; params,
    of uniform's cuts, is not timed again but takes uniform's step. uniform measures
    fastest (1x against dp's 2x) and is kept."""
    spec, graph, profile = mlp
    plan = _solve(profile)
    seen = _timer(monkeypatch, profile, [10.0, 2.0, 1.0, 1.0, 2.0, 10.0])

    def planner(costs: Profile, method: str, **choice: Any) -> Plan:
        assert choice == CHOICE
        if method == "dp":
            return _solve(costs, "dp")
        # uniform and params: the split of costs whose first stage runs three times slower
        return _solve(scale_nodes(costs, {n: (3.0, 3.0) for n in plan.stages[0].nodes}))

    refined = refine(plan, profile, graph, spec.example_inputs, {}, _solve, rounds=3, baseline_plan=planner)
    info = refined.options["refine"]
    timed = info["baseline_timed"]
    assert len(seen) == 9 and seen[3] == seen[8] and seen[4] == seen[7] and seen[5] == seen[6]
    assert len({seen[3], seen[4], seen[5]}) == 3
    assert list(timed) == ["dp", "uniform", "params"] and timed["params"]["same_cuts_as"] == "uniform"
    assert info["baseline_kept"] == "uniform" and "baseline_skipped" not in info
    step = refined.predicted.iteration_s
    assert step == pytest.approx(timed["uniform"]["step_s"])
    assert timed["uniform"]["step_s"] < timed["dp"]["step_s"] < info["baseline_against"]["step_s"]
    assert _calls(refined, profile) == seen[5]
    assert [refined.baselines[k].iteration_s for k in ("uniform", "params")] == pytest.approx([step, step])
    assert refined.baselines["dp"].iteration_s == pytest.approx(timed["dp"]["step_s"])


def test_a_kept_baseline_round_trips_and_shows(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch, mlp: Setup) -> None:
    spec, graph, profile = mlp
    _timer(monkeypatch, profile, [3.0, 1.0, 1.0, 3.0])
    refined = refine(_solve(profile), profile, graph, spec.example_inputs, {}, _solve, rounds=3,
                     baseline_plan=_by_method([]))
    assert refined.options["refine"]["baseline_kept"] == "dp"
    path = tmp_path / "plan.json"
    refined.save(path)
    assert Plan.load(path) == refined
    assert main(["show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "(+0.0%, measured)" in out and "these stages are the dp split's" in out
    assert "not measured" not in out
    assert main(["check", str(path), "--baseline", str(path)]) == 0


def _settled(monkeypatch: pytest.MonkeyPatch, profile: Profile) -> list[Any]:
    """time_stages answers every stage at 1.5x its node sums: the cuts settle."""
    seen: list[Any] = []
    costs = profile.by_name

    def fake(split: Split, inputs: Sequence[torch.Tensor], **_: Any) -> StageTimes:
        held = [[n.name for n in st.module.graph.nodes if n.name in costs] for st in split.stages]
        seen.append(held)
        return StageTimes(tuple(1.5 * sum(costs[n].forward_s for n in h) for h in held),
                          tuple(1.5 * sum(costs[n].backward_s for n in h) for h in held))

    monkeypatch.setattr(timing, "time_stages", fake)
    return seen


@pytest.mark.parametrize("again", [1.5, 0.25])
def test_nothing_more_is_timed_where_the_cuts_settle_or_no_baseline_is_priced_faster(
        monkeypatch: pytest.MonkeyPatch, mlp: Setup, again: float) -> None:
    """Cuts that settle (every stage 1.5x its nodes), or cuts that keep moving but re-time
    under every baseline's price (0.25x): no baseline is planned or timed, and the plan is
    the one refined without a baseline planner, to the byte."""
    spec, graph, profile = mlp
    plan = _solve(profile)
    built: list[tuple[str, Plan]] = []
    runs = []
    for planner in (None, _by_method(built)):
        seen = _settled(monkeypatch, profile) if again == 1.5 else _timer(monkeypatch, profile, [again])
        refined = refine(plan, profile, graph, spec.example_inputs, {}, _solve, rounds=3, baseline_plan=planner)
        runs.append((refined, len(seen)))
    (without, n0), (with_planner, n1) = runs
    assert built == [] and n0 == n1 and with_planner.to_json() == without.to_json()
    info = with_planner.options["refine"]
    assert info["converged"] is (again == 1.5) and "baseline_timed" not in info
    if again == 0.25:  # did not settle: the re-time under every price
        assert n1 == 4 and all(b.iteration_s is None or b.iteration_s >= with_planner.predicted.iteration_s
                               for b in with_planner.baselines.values())


def test_baselines_that_cannot_be_planned_are_passed_over_and_the_kept_cuts_are_not_timed_again(
        monkeypatch: pytest.MonkeyPatch, mlp: Setup) -> None:
    """The kept cuts re-timed at 10x: every baseline is priced faster. dp does not fit (its
    planner raises) and is passed over, with why; uniform and params are the kept cuts:
    nothing more is timed, and they take the kept cuts' measured step."""
    spec, graph, profile = mlp
    seen = _timer(monkeypatch, profile, [10.0])
    asked: list[str] = []

    def planner(costs: Profile, method: str, **choice: Any) -> Plan:
        assert choice == CHOICE
        asked.append(method)
        if method == "dp":
            raise InfeasiblePlanError("no partition fits in memory (dp)", hint="")
        return _solve(costs, method)

    refined = refine(_solve(profile), profile, graph, spec.example_inputs, {}, _solve, rounds=3,
                     baseline_plan=planner)
    info = refined.options["refine"]
    assert sorted(asked) == ["dp", "params", "uniform"] and len(seen) == 4
    assert info["baseline_skipped"] == {"dp": "no partition fits in memory (dp)"}
    assert {info["baseline_timed"][k]["same_cuts_as"] for k in ("uniform", "params")} == {"kept"}
    step = refined.predicted.iteration_s
    assert info["baseline_kept"] is None and info["baseline_against"]["steps_s"] == [step]
    assert [refined.baselines[k].iteration_s for k in ("uniform", "params")] == pytest.approx([step, step])
    assert refined.baselines["dp"].iteration_s < step  # priced, and said not measured
    assert "a faster baseline here is not measured" in format_plan(refined)


@pytest.mark.parametrize("schedule", ["1f1b", "auto"])
def test_the_cli_plans_baselines_by_their_method(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch, mlp: Setup,
                                                 schedule: str) -> None:
    """``autopipe plan`` hands refine a planner by method (the fixed node times profiled, the
    stages timed as in the first test): the dp split is timed, kept, and said so. Under
    ``--schedule auto`` the baselines are planned for the schedule chosen, not searched again."""
    import autopipe.cli.plan_cmd as plan_cmd

    _, _, profile = mlp
    monkeypatch.setattr(plan_cmd, "_profile", lambda args, spec, with_runtime: (
        autopipe.trace(spec.model, spec.example_inputs, spec.example_kwargs), profile))
    _timer(monkeypatch, profile, [3.0, 1.0, 1.0, 3.0])
    out = tmp_path / "plan.json"
    assert main(["plan", MLP, "--spec-arg", "layers=6", "--stages", "2", "--microbatches", "4",
                 "--schedule", schedule, "--no-runtime-costs", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    plan = Plan.load(out)
    info = plan.options["refine"]
    # planned for the schedule and chunks chosen (zbv here: two chunks a rank), none passed over
    assert "baseline_skipped" not in info and any("steps_s" in v for v in info["baseline_timed"].values())
    if schedule == "1f1b":
        assert "these stages are the dp split's" in text
        assert info["baseline_kept"] == "dp" and plan.solver.method == "ilp"


def _spy(seen: list[Any]) -> Any:
    """A ``refine_candidate`` that plans the uniform baseline with the planner it is handed
    (recorded in ``seen``) and returns its plan as refined once, its cuts settled (no timing)."""
    from autopipe.refine import choice_of

    def spy(plan: Plan, profile: Profile, graph: Any, args: Any, kwargs: Any, replan: Any,
            **options: Any) -> Plan:
        planner = options.get("baseline_plan")
        choice = {k: v for k, v in choice_of(plan).items() if k != "batch_size"}
        seen.append(None if planner is None else planner(profile, "uniform", **choice))
        n = plan.num_stages
        return dataclasses.replace(plan, options={**plan.options, "refine": {
            "rounds": [{"forward_ratio": [1.0] * n, "backward_ratio": [1.0] * n,
                        "measured_step_s": plan.predicted.iteration_s, "cuts_moved": False}],
            "converged": True, "timed": "together"}})
    return spy


@pytest.mark.parametrize("via", ["cli", "api", "cli-gpus"])
def test_a_search_hands_its_candidates_a_planner_by_method(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, via: str) -> None:
    """The finalists of a measured ``--batch-size`` search, or of a ``--gpus`` one, are
    refined with a baseline planner too (until 2026-12-07 only a single plan's were): it plans
    the candidate alone, at its own micro-batch size and degrees, by the method asked, without
    searching again."""
    import autopipe.api as api
    import autopipe.refine as refine_module

    seen: list[Plan | None] = []
    monkeypatch.setattr(refine_module if via.startswith("cli") else api, "refine_candidate", _spy(seen))
    if via.startswith("cli"):
        degrees = ["--gpus", "4", "--stages", "2"] if via == "cli-gpus" else ["--stages", "2"]
        assert main(["plan", MLP, "--spec-arg", "layers=6", *degrees, "--batch-size", "8",
                     "--no-runtime-costs", "--time-limit", "10", "-o", str(tmp_path / "plan.json")]) == 0
        plan = Plan.load(tmp_path / "plan.json")
    else:
        from autopipe.spec import example_target

        spec = example_spec("mlp", layers=6, batch_size=4)
        plan = autopipe.plan(spec.model, spec.example_inputs, num_stages=2, batch_size=8,
                             loss_fn=spec.loss_fn, target=example_target(spec), runtime_costs=False,
                             time_limit=10)
    assert seen and all(p is not None for p in seen), seen
    for baseline in seen:
        assert baseline is not None and baseline.solver.method == "uniform"
        assert "search" not in baseline.options and baseline.num_stages == 2
        # a degree search's candidate: planned with its replicas' gradient sync
        assert ("grad_sync" in baseline.options) == (via == "cli-gpus")
    assert plan.options["search" if via != "cli-gpus" else "degrees"]
    assert plan.microbatches * plan.replicas * plan.options["microbatch_size"] == 8
