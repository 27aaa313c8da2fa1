"""Tests for autopipe/partition/chunks.py and interleaved planning: p × V chunks, the ILP
against brute force, per-rank memory, and the simulator on the emitted plans."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from autopipe.cli.main import main
from autopipe.errors import InfeasiblePlanError, PlanError
from autopipe.partition import brute
from autopipe.partition.chain import Chain
from autopipe.partition.chunks import chunk_inflight, live_sets
from autopipe.partition.costs import evaluate, violations
from autopipe.partition.dp import min_bottleneck
from autopipe.partition.ilp import _Model, solve_ilp
from autopipe.partition.planner import plan_profile
from autopipe.partition.problem import Config, from_profile
from autopipe.partition.synthetic import synthetic_profile
from autopipe.partition.timeline import longest_path
from autopipe.partition.windows import ancestors, pinned_windows
from autopipe.plan_format import Device, Plan
from autopipe.profile.profile import Profile
from autopipe.report import format_plan, rank_parts
from autopipe.runtime.placement import rank_of_stages
from autopipe.schedule.actions import check_schedule
from autopipe.schedule.simulate import StageCost, simulate, simulate_plan
from tests.conftest import ROOT
from tests.partition_cases import Case, chunked_cases

MLP = str(ROOT / "examples" / "mlp.py") + ":build"
MLP_PROFILE = ROOT / "profiles" / "cpu" / "mlp.json"


def close(a: float, b: float, rel: float = 1e-6) -> bool:
    return abs(a - b) <= rel * max(1.0, abs(a), abs(b))


def _shapes() -> list[tuple[str, int, int, int]]:
    out = []
    for schedule, vs in (("interleaved-1f1b", (2, 3)), ("zbv", (2,)), ("dualpipev", (2,))):
        for p in (2, 3, 4):
            for v in vs:
                for m in range(1, 9):
                    try:
                        check_schedule(schedule, p, m, v)
                    except PlanError:
                        continue
                    out.append((schedule, p, v, m))
    return out


def test_memory_moments_and_longest_path_equal_the_simulator() -> None:
    """Per rank, the largest Σ held × bytes over ``live_sets`` is the simulator's activation
    peak; per chunk ``chunk_inflight`` its peak count; and the timeline's longest path (chunk
    to chunk sends, zbv's split backward, DualPipeV's sends after its overlapped pairs, each
    rank's optimizer steps after its last action) its step."""
    rng = random.Random(0)
    for schedule, p, v, m in _shapes():
        n = p * v
        for _ in range(3):
            costs = [StageCost(forward_s=rng.uniform(0.1, 1), backward_input_s=rng.uniform(0.1, 2),
                               backward_weight_s=rng.uniform(0, 1) if schedule != "interleaved-1f1b" else 0.0,
                               send_s=rng.uniform(0, 0.3) if c < n - 1 else 0.0,
                               activation_bytes=rng.randint(1, 1000), optimizer_s=rng.uniform(0, 0.2))
                     for c in range(n)]
            sim = simulate(costs, schedule=schedule, microbatches=m, virtual_stages=v)
            moments = live_sets(schedule, p, m, v)
            act = [c.activation_bytes for c in costs]
            peaks = tuple(max(sum(k * a for k, a in zip(held, act)) for held in rank) for rank in moments)
            assert peaks == sim.peak_activation_bytes, (schedule, p, v, m)
            assert chunk_inflight(schedule, p, m, v) == sim.stage_peak_inflight
            step, _ = longest_path(schedule, [c.forward_s for c in costs],
                                   [c.backward_s for c in costs], [c.backward_weight_s for c in costs],
                                   [c.send_s for c in costs[:-1]], m,
                                   [c.optimizer_s for c in costs], virtual_stages=v)
            assert close(step, sim.iteration_s, 1e-12), (schedule, p, v, m)


def test_interleaving_holds_more_than_1f1b() -> None:
    """Rank 0 of 2 holds 2 micro-batches of each of its chunks with m = 2 (1F1B: 2 of its one
    stage), so at equal bytes per rank it needs twice the activations: what memory must see."""
    assert live_sets("interleaved-1f1b", 2, 2, 2)[0] == ((2, 0, 2, 0),)


def _check_model(case: Case) -> None:
    """For valid chunk assignments (with any recomputed blocks) the MIP's objective equals
    costs.evaluate, and its largest memory row per rank the rank's memory over its limit."""
    problem = case.problem()
    lo, hi = pinned_windows(problem)
    if any(a > b for a, b in zip(lo, hi)) or len(problem.recompute_candidates()) > brute.MAX_RECOMPUTED:
        return
    model = _Model(problem, ancestors(problem), lo, hi)
    rng = random.Random(0)
    for k, (stage_of, chosen) in enumerate(s for s in brute.solutions(problem) if rng.random() < 0.3):
        if k >= 20:
            break
        ev = evaluate(problem, stage_of, chosen)
        model.add_path(ev.critical)
        values = model.warm(stage_of, ev.recompute)
        assert model.solution(values) == (tuple(stage_of), ev.recompute)
        assert close(model.objective.value(values) * model.tau, ev.objective_s)
        for r, rank in enumerate(ev.ranks):
            if rank.limit < float("inf"):
                rows = [row.value(values) for name, row in model.rows.items()
                        if name.startswith((f"mem_r{r}_", f"memstep_r{r}"))]
                assert close(max(rows), rank.memory / rank.limit, 1e-9)
        assert not any(name.startswith("mem_0") for name in model.rows)  # no per-chunk limit


def _check_ilp(case: Case) -> None:
    """Cold, and warm-started from the chain DP where it fits: the brute-force optimum."""
    problem = case.problem()
    if problem.num_real < problem.config.num_stages or len(problem.recompute_candidates()) > brute.MAX_RECOMPUTED:
        return
    exact = brute.best(problem)
    dp = min_bottleneck(Chain(problem))
    for incumbent in (None, dp) if dp is not None and evaluate(problem, dp).fits else (None,):
        res = solve_ilp(problem, incumbent=incumbent, gap=1e-9)
        if exact is None:
            assert res.stage_of is None and res.status == "infeasible"
            continue
        assert res.stage_of is not None and res.status == "optimal"
        assert not violations(problem, res.stage_of)
        ev = evaluate(problem, res.stage_of, res.recompute)
        assert ev.fits and close(ev.objective_s, exact[0])
        if problem.config.recompute == "full":
            assert res.recompute == problem.recompute_candidates()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunked_cases())
def test_model_encodes_the_cost_model(case: Case) -> None:
    _check_model(case)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunked_cases())
def test_ilp_equals_brute_force(case: Case) -> None:
    _check_ilp(case)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunked_cases(schedules=("dualpipev",)))
def test_dualpipev_ilp_equals_brute_force_and_encodes_the_cost_model(case: Case) -> None:
    """DualPipeV ([Note: DualPipeV]), m = 4–6 on 2 ranks × 2 chunks: as the others."""
    assert case.config.schedule == "dualpipev" and case.config.microbatches >= 4
    _check_model(case)
    _check_ilp(case)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunked_cases(max_nodes=5, schedules=("interleaved-1f1b", "zbv", "dualpipev"),
                     recompute=("auto", "full")))
def test_recomputing_chunks_ilp_equals_brute_force_and_encodes_the_cost_model(case: Case) -> None:
    """Cuts and each chunk's recomputed blocks chosen together ([Note: recomputation]): the
    ILP's step equals the best of every partition with every subset of recomputed blocks
    (``auto``) or all of them (``full``), and its rows equal costs.evaluate's rank memory
    (reduced saved bytes at each moment, plus the largest recomputed activations alive);
    zbv and dualpipev run the recomputed forward in B and in W ([Note: recomputation in a
    split backward])."""
    assert case.config.recompute in ("auto", "full")
    _check_model(case)
    _check_ilp(case)


def _chain_need(profile: Profile, schedule: str, mode: str, optimizer: str) -> int:
    """The least rank memory of any split of a chain into 2 ranks × 2 chunks."""
    cfg = Config(num_stages=4, microbatches=4, schedule=schedule, link_bandwidth=25e9,
                 virtual_stages=2, devices=tuple(Device(name=f"d{c % 2}", memory=0) for c in range(4)),
                 recompute=mode)
    problem = from_profile(profile, cfg, optimizer=optimizer)
    n = problem.size  # a chain: every convex partition is a chain split
    return min(evaluate(problem, [s for s in range(4) for _ in range(b[s], b[s + 1])]).max_memory
               for b in ((0, *cuts, n) for cuts in itertools.combinations(range(1, n), 3)))


@pytest.mark.parametrize("schedule, optimizer", [("interleaved-1f1b", "adam"), ("interleaved-1f1b", "sgd"),
                                                   ("zbv", "adam"), ("dualpipev", "sgd")])
def test_a_limit_between_the_needs_gives_a_mixed_chunked_plan(schedule: str, optimizer: str) -> None:
    """Below what any split into chunks needs without recomputation but not below what full
    recomputation needs: none does not fit, full does, and auto recomputes some blocks, not
    all, in a faster plan; every rank fits, and the simulator gives the MIP's step."""
    profile = synthetic_profile(24, seed=3, skip_prob=0.0)
    limit = (_chain_need(profile, schedule, "none", optimizer)
             + _chain_need(profile, schedule, "full", optimizer)) // 2
    options = dict(num_stages=2, microbatches=4, schedule=schedule, memory_limit=limit,
                   optimizer=optimizer)
    with pytest.raises(InfeasiblePlanError, match="2 ranks × 2 chunks") as info:
        plan_profile(profile, **options, recompute="none")  # type: ignore[arg-type]
    assert info.value.hint is not None and "--recompute auto" in info.value.hint  # what fits
    assert "per rank" in info.value.hint
    full = plan_profile(profile, **options, recompute="full")  # type: ignore[arg-type]
    auto = plan_profile(profile, **options)  # type: ignore[arg-type]
    count = [sum(len(g) for s in p.stages for g in s.recompute) for p in (auto, full)]
    assert 0 < count[0] < count[1]
    assert auto.predicted.iteration_s < full.predicted.iteration_s
    assert auto.options["recompute"] == {"mode": "auto", "without_s": None}
    for plan in (auto, full):
        assert plan.solver.status == "optimal" and plan.num_stages == 4
        assert close(plan.predicted.iteration_s, plan.solver.objective_s, 1e-9)
        assert close(simulate_plan(Plan.from_json(plan.to_json())).iteration_s, plan.predicted.iteration_s, 1e-9)
        for r in (0, 1):  # a rank's chunks' peaks add up to the rank's peak
            assert sum(p for s, p in zip(plan.stages, plan.predicted.peak_memory) if s.rank == r) <= limit
        for s in plan.stages:
            assert (s.recompute_s > 0) == bool(s.recompute)


@pytest.fixture(scope="module")
def mlp_profile() -> Profile:
    return Profile.load(MLP_PROFILE)


@pytest.mark.parametrize("schedule, m, ranks", [
    ("interleaved-1f1b", 2, [0, 1, 0, 1]), ("interleaved-1f1b", 8, [0, 1, 0, 1]),
    ("zbv", 2, [0, 1, 1, 0]), ("zbv", 5, [0, 1, 1, 0]),
    ("dualpipev", 4, [0, 1, 1, 0]), ("dualpipev", 7, [0, 1, 1, 0])])
def test_planned_chunks_simulate_to_the_ilp_step(mlp_profile: Profile, schedule: str, m: int,
                                                 ranks: list[int]) -> None:
    """The plan records 4 chunks on the ranks the runtime places them on, and the simulator
    on the plan alone gives the ILP's step (zbv: no send between the chunks at the V's tip)."""
    plan = plan_profile(mlp_profile, num_stages=2, microbatches=m, schedule=schedule,
                        virtual_stages=2, memory_limit="1GiB")
    assert plan.num_stages == 4 and len(plan.devices) == 2
    assert [s.rank for s in plan.stages] == ranks == rank_of_stages(plan)
    assert plan.solver.status == "optimal"
    assert close(plan.predicted.iteration_s, plan.solver.objective_s, 1e-9)
    again = Plan.from_json(plan.to_json())
    assert close(simulate_plan(again).iteration_s, plan.predicted.iteration_s, 1e-9)
    held = {r: ", ".join(str(s) for s, q in enumerate(ranks) if q == r) for r in (0, 1)}
    assert f"rank 0 runs stages {held[0]}; rank 1 runs stages {held[1]}" in format_plan(plan)
    assert all(peak <= 2**30 for peak in plan.predicted.peak_memory)
    # where each rank's step goes: its chunks together, the parts adding up to the step
    rows = rank_parts(plan)
    assert [label for label, _ in rows] == ["rank 0", "rank 1"]
    for _, part in rows:
        assert close(sum(part.values()), plan.predicted.iteration_s, 1e-9)


def test_a_rank_limit_binds_on_the_sum_of_its_chunks(mlp_profile: Profile) -> None:
    """Under a limit between the largest chunk and the largest rank of the free plan, the
    plan moves work so every rank's chunks fit together; under a tiny one nothing fits and
    the error names the ranks. (SGD: Adam's states and step temporaries, which no split
    balances better on this MLP, would bind before the activations do.)"""
    free = plan_profile(mlp_profile, num_stages=2, microbatches=4, schedule="interleaved-1f1b",
                        optimizer="sgd")
    per_rank = [sum(p for s, p in zip(free.stages, free.predicted.peak_memory) if s.rank == r)
                for r in range(2)]
    limit = int(0.99 * max(per_rank))
    assert limit > max(s.memory.total for s in free.stages)
    bound = plan_profile(mlp_profile, num_stages=2, microbatches=4, schedule="interleaved-1f1b",
                         memory_limit=limit, optimizer="sgd")
    used = [sum(p for s, p in zip(bound.stages, bound.predicted.peak_memory) if s.rank == r)
            for r in range(2)]
    assert max(used) <= limit
    assert bound.predicted.iteration_s > free.predicted.iteration_s  # the limit costs time
    with pytest.raises(InfeasiblePlanError, match=r"2 ranks × 2 chunks") as e:
        plan_profile(mlp_profile, num_stages=2, microbatches=4, schedule="interleaved-1f1b",
                     memory_limit=limit // 20, optimizer="sgd")
    assert e.value.hint is not None and "1f1b" in e.value.hint


def test_check_holds_a_rank_to_its_limit_with_all_its_chunks(mlp_profile: Profile) -> None:
    """``check --baseline`` compared each chunk's memory alone with its device (until
    2026-12-07): a rank whose two chunks together exceed its device passed. Now a device
    of several chunks is held to the sum of their predicted peaks, and its line says so."""
    from dataclasses import replace

    from autopipe.quality.compare import compare_plans, device_peaks

    free = plan_profile(mlp_profile, num_stages=2, microbatches=4, schedule="interleaved-1f1b",
                        optimizer="sgd")
    peaks = device_peaks(free)
    assert sorted(stages for _, stages in peaks.values()) == [(0, 2), (1, 3)]
    limit = int(0.99 * max(peak for peak, _ in peaks.values()))
    assert limit > max(s.memory.total for s in free.stages)  # every chunk alone fits
    tight = replace(free, devices=tuple(replace(d, memory=limit) for d in free.devices))
    result = compare_plans(tight, free)
    assert result.worse and any("the rank of stages" in r and "needs" in r for r in result.reasons), result.reasons
    assert result.lines[3].startswith("largest rank")
    assert not compare_plans(free, free).worse


@pytest.mark.parametrize("kwargs, match", [
    (dict(schedule="1f1b", virtual_stages=2), "one stage per rank"),
    (dict(schedule="zbv", virtual_stages=3), "exactly 2 chunks per rank"),
    (dict(schedule="dualpipev", virtual_stages=3), "exactly 2 chunks per rank"),
    (dict(schedule="dualpipev", num_stages=1), "on at least 2 ranks"),
    (dict(schedule="dualpipev", microbatches=3), r"needs at least as many micro-batches as stages \(3 micro-batches, 4 stages"),
    (dict(schedule="interleaved-1f1b", virtual_stages=0), "virtual_stages = 0"),
    (dict(schedule="interleaved-1f1b", virtual_stages=2, microbatches=5), "multiple of its 2 rounds"),
    (dict(schedule="interleaved-1f1b", virtual_stages=40), "cannot cut the model into 80 stages"),
])
def test_bad_chunk_options_are_plan_errors(mlp_profile: Profile, kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"num_stages": 2, "microbatches": 4, **kwargs}
    with pytest.raises(PlanError, match=match):
        plan_profile(mlp_profile, **args)  # type: ignore[arg-type]


def test_config_checks_its_chunks() -> None:
    dev = Device(name="d", memory=0)
    with pytest.raises(PlanError, match="3 chunks cannot run as 2 per rank"):
        Config(num_stages=3, microbatches=2, schedule="interleaved-1f1b", devices=(dev,) * 3,
               link_bandwidth=1e9, virtual_stages=2)
    cfg = Config(num_stages=6, microbatches=3, schedule="interleaved-1f1b", devices=(dev,) * 6,
                 link_bandwidth=1e9, virtual_stages=2)
    assert cfg.num_ranks == 3 and [cfg.rank_of(c) for c in range(6)] == [0, 1, 2, 0, 1, 2]


def test_cli_plans_and_shows_chunks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "plan.json"
    assert main(["plan", MLP, "--stages", "2", "--microbatches", "2", "--profile", str(MLP_PROFILE),
                 "--schedule", "interleaved-1f1b", "--virtual-stages", "2", "-o", str(out)]) == 0
    assert main(["show", str(out), "--width", "60"]) == 0
    text = capsys.readouterr().out
    assert "rank 0 runs stages 0, 2" in text and "rank 0 (stages 0, 2)" in text
    assert main(["plan", MLP, "--stages", "2", "--profile", str(MLP_PROFILE), "--schedule", "1f1b",
                 "--virtual-stages", "2", "-o", str(tmp_path / "bad.json")]) == 2
    assert "one stage per rank" in capsys.readouterr().err


def test_degree_search_refuses_chunks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--gpus places one stage per GPU: a chunked schedule there is a clear error."""
    assert main(["plan", MLP, "--gpus", "4", "--batch-size", "8", "--profile", str(MLP_PROFILE),
                 "--schedule", "zbv", "-o", str(tmp_path / "p.json")]) == 2
    assert "several chunks per rank" in capsys.readouterr().err


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunked_cases(max_nodes=5, schedules=("interleaved-1f1b", "zbv", "dualpipev"),
                     recompute=("none", "auto"), remake=("all", "auto")))
def test_chunks_making_values_again_ilp_equals_brute_force_and_encodes_the_cost_model(case: Case) -> None:
    """Tables (nodes of no input) that a chunk reading them from another chunk makes again
    ([Note: values made again]), next to recomputed blocks: the MIP's rows equal
    costs.evaluate's, and its optimum is brute force's."""
    _check_model(case)
    _check_ilp(case)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunked_cases(max_nodes=5, schedules=("interleaved-1f1b", "zbv", "dualpipev"), no_grad=True))
def test_chunks_sending_values_forward_only_ilp_equals_brute_force_and_encodes_the_cost_model(case: Case) -> None:
    """Values without a gradient, those larger than a send latency's worth of bytes going
    forward only ([Note: values without a gradient]), between chunks (a V's tip hands them
    over in memory): the MIP's rows equal costs.evaluate's, and its optimum is brute force's."""
    _check_model(case)
    _check_ilp(case)
