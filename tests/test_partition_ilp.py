"""Tests for autopipe/partition/ilp.py: exactness against brute force on random DAGs."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autopipe.partition import baselines, brute
from autopipe.partition.chain import Chain
from autopipe.partition.costs import TIE_BANDS, evaluate, tie_key, violations
from autopipe.partition.dp import min_bottleneck
from autopipe.partition.ilp import _Model, solve_ilp
from autopipe.partition.problem import Config, Problem, from_profile
from autopipe.partition.synthetic import synthetic_profile
from autopipe.partition.windows import ancestors, pinned_windows
from autopipe.plan_format import Device
from autopipe.profile.profile import NodeProfile, Profile
from tests.partition_cases import Case, cases, check_rows

EXACT = 1e-9


def _with_optimum(case: Case) -> tuple[Problem, tuple[float, list[int]]] | None:
    """The case's problem and brute force's optimum; None where it has none to compare."""
    problem = case.problem()
    if problem.num_real < problem.config.num_stages:
        return None
    exact = brute.best(problem)
    return None if exact is None else (problem, exact)


def close(a: float, b: float, rel: float = 1e-6) -> bool:
    return abs(a - b) <= rel * max(1.0, abs(a), abs(b))


@settings(max_examples=90, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(schedules=("1f1b", "gpipe", "zb-h1")))
def test_model_encodes_the_cost_model(case: Case) -> None:
    """For valid partitions, the MIP's objective and rows equal costs.evaluate (under
    zb-h1 the B rows hold input gradients only and the W rows weight gradients)."""
    _encodes(case)


def _encodes(case: Case) -> None:
    problem = case.problem()
    anc = ancestors(problem)
    lo, hi = pinned_windows(problem)
    for a, b in zip(lo, hi):
        if a > b:
            return
    model = _Model(problem, anc, lo, hi)
    for k, stage_of in enumerate(brute.partitions(problem)):
        if k >= 30:
            break
        ev = evaluate(problem, stage_of)
        model.add_path(ev.critical)
        values = model.warm(stage_of)
        # every path cut is at most the step, and the critical one is the step
        assert close(model.objective.value(values) * model.tau, ev.objective_s)
        check_rows(model, values, ev)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(), st.booleans())
def test_ilp_equals_brute_force(case: Case, warm: bool) -> None:
    _finds_the_optimum(case, warm)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(schedules=("1f1b", "gpipe", "zb-h1"), remake=("all", "auto")), st.booleans())
def test_values_made_again_are_encoded_and_optimal(case: Case, warm: bool) -> None:
    """Random DAGs with tables (nodes that read only other tables, or nothing) that a stage
    reading them makes again ([Note: values made again]): the MIP's rows equal
    costs.evaluate's, and its optimum is brute force's."""
    _encodes(case)
    _finds_the_optimum(case, warm)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(schedules=("1f1b", "gpipe", "zb-h1"), no_grad=True), st.booleans())
def test_values_sent_forward_only_are_encoded_and_optimal(case: Case, warm: bool) -> None:
    """Random DAGs whose values without a gradient are marked; those larger than a send
    latency's worth of bytes go forward only, in a message of their own, nothing coming
    back ([Note: values without a gradient]): the MIP's rows equal costs.evaluate's, and its
    optimum is brute force's."""
    _encodes(case)
    _finds_the_optimum(case, warm)


def _finds_the_optimum(case: Case, warm: bool) -> None:
    problem = case.problem()
    if problem.num_real < problem.config.num_stages:
        return
    exact = brute.best(problem)
    dp = min_bottleneck(Chain(problem))
    res = solve_ilp(problem, incumbent=dp if warm else None, gap=EXACT)
    if exact is None:
        assert res.stage_of is None and res.status == "infeasible"
        assert dp is None
        return
    assert res.stage_of is not None and res.status == "optimal"
    assert not violations(problem, res.stage_of)
    ev = evaluate(problem, res.stage_of)
    assert ev.fits
    assert close(ev.objective_s, exact[0])
    assert res.lower_bound_s <= res.objective_s * (1 + 1e-9)
    if not math.isnan(res.model_objective_s):
        # the MIP's own value of its answer, within HiGHS's feasibility tolerances (one
        # drawn case read 3.99998 for a step of 3.99999)
        assert close(res.model_objective_s, res.objective_s, rel=1e-5)
    for other in (dp, baselines.uniform(problem), baselines.params(problem)):
        if other is not None and evaluate(problem, other).fits:
            # within the MIP solver's own tolerances (about 1e-6 relative)
            assert res.objective_s <= evaluate(problem, other).objective_s * (1 + 1e-6) + 1e-9


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(schedules=("1f1b", "gpipe", "zb-h1")))
def test_ties_go_to_the_most_robust_partition(case: Case) -> None:
    """Among the fastest partitions the ILP takes one within brute force's bands: the
    smallest bottleneck stage, then the heaviest lightest stage, then the least memory, each
    within TIE_BANDS of the best of those left (see [Note: ties])."""
    found = _with_optimum(case)
    if found is None:
        return
    problem, exact = found
    res = solve_ilp(problem, incumbent=min_bottleneck(Chain(problem)), gap=EXACT)
    assert res.stage_of is not None and res.status == "optimal"
    ev = evaluate(problem, res.stage_of)
    assert close(ev.objective_s, exact[0])
    fitting = [e for e in (evaluate(problem, s) for s in brute.partitions(problem)) if e.fits]
    fastest = min(e.objective_s for e in fitting)
    keys = [tie_key(problem, e) for e in fitting if e.objective_s <= fastest * (1 + 1e-9)]
    mine = tie_key(problem, ev)
    for i in range(3):
        least = min(k[i] for k in keys)
        held = least + TIE_BANDS[i] * abs(least)
        assert mine[i] <= held + 1e-6 * max(1.0, abs(held)), (i, mine, least)
        keys = [k for k in keys if k[i] <= held + 1e-12]


def test_ties_spread_the_work_over_every_stage() -> None:
    """One block far heavier than the rest (a vocabulary head): however the others are
    split, the step is the same; no stage is left nearly empty."""
    prof = synthetic_profile(40, seed=2)  # before ties were broken: [0.02, 0.02, 0.54, 0.58] s
    heavy = prof.nodes[-2]  # the last computing node
    total = sum(n.forward_s + n.backward_input_s + n.backward_weight_s for n in prof.nodes)
    nodes = tuple(replace(n, forward_s=total / 2, backward_input_s=total / 2) if n is heavy else n
                  for n in prof.nodes)
    cfg = Config(num_stages=4, microbatches=8, schedule="1f1b", devices=_devices(4),
                 link_bandwidth=math.inf)
    problem = from_profile(replace(prof, nodes=nodes), cfg)
    res = solve_ilp(problem, incumbent=min_bottleneck(Chain(problem)), gap=1e-3)
    assert res.status == "optimal" and res.stage_of is not None
    busy = [s.busy_s for s in evaluate(problem, res.stage_of).stages]
    # the lightest stage is kept within TIE_BANDS[1] (25%) of the most it could get, at
    # most a third of the 0.58 s the others share; memory is balanced within that (stage 0
    # holds the batch's inputs), so it may get 0.75 × 0.19 s
    assert min(busy) >= 0.2 * max(busy), busy


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(max_nodes=5))
def test_cbc_fallback_matches_highs(case: Case) -> None:
    problem = case.problem()
    if problem.num_real < problem.config.num_stages:
        return
    highs = solve_ilp(problem, gap=EXACT)
    cbc = solve_ilp(problem, gap=EXACT, solver="cbc")
    assert highs.status == cbc.status
    if highs.stage_of is not None:
        assert close(highs.objective_s, cbc.objective_s)
        assert cbc.lower_bound_s <= cbc.objective_s * (1 + 1e-9)


def _devices(p: int, memory: int = 0) -> tuple[Device, ...]:
    return tuple(Device(name=f"d{i}", memory=memory) for i in range(p))


def test_convex_cuts_beat_the_chain_on_branches() -> None:
    """Two parallel towers: the ILP may put parts of both in a stage, the chain DP cannot."""
    prof = synthetic_profile(80, seed=5, branches=2, skip_prob=0.05)
    cfg = Config(num_stages=4, microbatches=8, schedule="1f1b", devices=_devices(4),
                 link_bandwidth=25e9)
    problem = from_profile(prof, cfg)
    dp = min_bottleneck(Chain(problem))
    assert dp is not None
    res = solve_ilp(problem, incumbent=dp, gap=1e-6)
    assert res.status == "optimal"
    assert res.objective_s < evaluate(problem, dp).objective_s * (1 - 1e-3)


def test_warm_start_windows_fix_most_variables() -> None:
    prof = synthetic_profile(300, seed=2)
    cfg = Config(num_stages=8, microbatches=16, schedule="1f1b", devices=_devices(8),
                 link_bandwidth=25e9)
    problem = from_profile(prof, cfg)
    dp = min_bottleneck(Chain(problem))
    warm = solve_ilp(problem, incumbent=dp, gap=1e-3)
    assert warm.status == "optimal"
    assert warm.binaries < 0.2 * problem.size * (cfg.num_stages - 1)
    assert warm.lower_bound_s >= warm.objective_s * (1 - 1e-3) - 1e-12


def test_infeasible_memory_is_proven() -> None:
    prof = synthetic_profile(20, seed=1)
    cfg = Config(num_stages=2, microbatches=4, schedule="1f1b", devices=_devices(2, memory=1 << 20),
                 link_bandwidth=25e9)
    res = solve_ilp(from_profile(prof, cfg))
    assert res.status == "infeasible" and res.stage_of is None


def test_one_stage() -> None:
    prof = synthetic_profile(10, seed=1)
    cfg = Config(num_stages=1, microbatches=3, schedule="1f1b", devices=_devices(1),
                 link_bandwidth=25e9)
    problem = from_profile(prof, cfg)
    res = solve_ilp(problem)
    assert res.stage_of == (0,) * problem.size
    assert close(res.objective_s, 3 * sum(b.work_s for b in problem.blocks))


def test_unknown_solver() -> None:
    from autopipe.errors import PlanError

    prof = synthetic_profile(10, seed=1)
    cfg = Config(num_stages=2, microbatches=3, schedule="1f1b", devices=_devices(2),
                 link_bandwidth=25e9)
    with pytest.raises(PlanError, match="unknown MIP solver"):
        solve_ilp(from_profile(prof, cfg), solver="gurobi")


@pytest.mark.parametrize("schedule", ["1f1b", "gpipe"])
def test_every_method_agrees_at_a_limit_filled_exactly(schedule: str) -> None:
    """A partition that needs exactly the device's bytes: the ILP keeps a 1e-6 headroom for
    its solver tolerances, and brute force, the DP and ``fits`` use the same rule."""
    prof = synthetic_profile(7, seed=11)
    free = Config(num_stages=2, microbatches=2, schedule=schedule, devices=_devices(2),
                  link_bandwidth=25e9)
    best = brute.best(from_profile(prof, free))
    assert best is not None
    need = max(s.memory for s in evaluate(from_profile(prof, free), best[1]).stages)
    cfg = Config(num_stages=2, microbatches=2, schedule=schedule,
                 devices=_devices(2, memory=int(need)), link_bandwidth=25e9)
    problem = from_profile(prof, cfg)
    assert not evaluate(problem, best[1]).fits
    exact = brute.best(problem)
    dp = min_bottleneck(Chain(problem))
    res = solve_ilp(problem, incumbent=dp, gap=1e-9)
    if exact is None:
        assert res.status == "infeasible" and dp is None
    else:
        assert res.stage_of is not None and evaluate(problem, res.stage_of).fits
        assert math.isclose(res.objective_s, exact[0], rel_tol=1e-9)


def _tied_chain(**middle: dict[str, object]) -> Profile:
    """x → the ``middle`` nodes (name → NodeProfile fields beyond the defaults) → output, a
    chain of 8-byte values; each node 1 s forward and 2 s backward; w of 4000 bytes."""
    def node(name: str, **kw: object) -> NodeProfile:
        base = dict(name=name, op="call_function", target="f", module=name, forward_s=1.0,
                    backward_input_s=2.0, backward_weight_s=0.0, activation_bytes=8,
                    output_bytes=8, param_bytes=0)
        base.update(kw)
        return NodeProfile(**base)  # type: ignore[arg-type]

    nodes = (node("x", op="placeholder", target="x", module="", forward_s=0.0,
                  backward_input_s=0.0, activation_bytes=0),
             *(node(name, **kw) for name, kw in middle.items()),
             NodeProfile(name="output", op="output", target="output", module="", forward_s=0.0,
                         backward_input_s=0.0, backward_weight_s=0.0, activation_bytes=0,
                         output_bytes=0, param_bytes=0, is_tensor=False))
    names = [n.name for n in nodes]
    return Profile(device="t", dtype="float32", microbatch_shape=[[1]], nodes=nodes,
                   edges=tuple((u, v, 8) for u, v in itertools.pairwise(names)), params={"w": 4000})


def test_a_tied_embedding_on_the_rows_line_is_priced_as_evaluate_prices_it() -> None:
    """A tied embedding (an embedding node and one other reader) on CPU stages: the MIP's
    objective equals ``costs.evaluate``'s on every partition, and its optimum is brute force's."""
    profile = _tied_chain(a=dict(param_bytes=4000, params=("w",), embedding=True), b={}, c={},
                          d=dict(shared_params=("w",), forward_s=3.0))
    config = Config(num_stages=3, microbatches=3, schedule="1f1b", link_bandwidth=1000.0,
                    devices=tuple(Device(name=f"cpu:{i}", memory=0) for i in range(3)),
                    allreduce_latency_s=0.5, rows_sum_bandwidth=4000.0, rows_sum_latency_s=0.25)
    problem = from_profile(profile, config, optimizer="sgd")
    assert problem.rows_params == {"w"}
    model = _Model(problem, ancestors(problem), *pinned_windows(problem))
    syncs = set()
    for stage_of in brute.partitions(problem):
        ev = evaluate(problem, stage_of)
        model.add_path(ev.critical)
        assert close(model.objective.value(model.warm(stage_of)) * model.tau, ev.objective_s)
        syncs.add(round(ev.tied_sync_s, 9))
    assert syncs == {1.25}  # a and d on two stages in every partition: 0.25 + 4000 / 4000
    exact = brute.best(problem)
    res = solve_ilp(problem, gap=1e-9)
    assert exact is not None and res.stage_of is not None
    assert math.isclose(res.objective_s, exact[0], rel_tol=1e-9)


@pytest.mark.parametrize("latency", [0.0, 0.5])
def test_tied_sync_over_three_stages_is_a_ring(latency: float) -> None:
    """A weight read on all three stages syncs over a 3-rank ring (4/3 of its bytes through
    each rank, two latencies), two stages over 2 ranks (its bytes once, one latency): the
    MIP prices both as ``costs.evaluate`` does, and its optimum is brute force's."""
    profile = _tied_chain(a=dict(param_bytes=4000, params=("w",)), b=dict(shared_params=("w",)), c={},
                          d=dict(shared_params=("w",)))
    config = Config(num_stages=3, microbatches=3, schedule="1f1b", link_bandwidth=1000.0,
                    devices=tuple(Device(name=f"d{i}", memory=0) for i in range(3)),
                    allreduce_latency_s=latency)
    problem = from_profile(profile, config, optimizer="sgd")
    anc = ancestors(problem)
    lo, hi = pinned_windows(problem)
    model = _Model(problem, anc, lo, hi)
    syncs = set()
    for stage_of in brute.partitions(problem):
        ev = evaluate(problem, stage_of)
        model.add_path(ev.critical)
        values = model.warm(stage_of)
        assert close(model.objective.value(values) * model.tau, ev.objective_s)
        syncs.add(round(ev.tied_sync_s, 9))
    # 2 holders: 4 s and a latency; 3 holders: 5.33 s and two
    assert syncs == {round(4.0 + latency, 9), round(4000 * 4 / 3 / 1000 + 2 * latency, 9)}
    exact = brute.best(problem)
    assert exact is not None
    res = solve_ilp(problem, gap=EXACT)
    assert res.stage_of is not None and close(res.objective_s, exact[0])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(schedules=("1f1b", "gpipe", "zb-h1")), st.floats(0.5, 1.5), st.booleans())
def test_a_cutoff_keeps_the_answer_exact(case: Case, ratio: float, warm: bool) -> None:
    """[Note: a cutoff]: with a step to beat the ILP still finds the optimum where it is
    under the cutoff; where it is over, the lower bound is the cutoff and the incumbent is
    kept (``beaten`` without one)."""
    found = _with_optimum(case)
    if found is None:
        return
    problem, exact = found
    dp = min_bottleneck(Chain(problem)) if warm else None
    cutoff = exact[0] * ratio
    res = solve_ilp(problem, incumbent=dp, gap=EXACT, cutoff=cutoff)
    if exact[0] <= cutoff * (1 - 1e-6):
        assert res.status == "optimal" and close(res.objective_s, exact[0])
    elif exact[0] >= cutoff * (1 + 1e-6):
        assert res.lower_bound_s >= cutoff * (1 - 1e-6)
        assert res.lower_bound_s <= exact[0] * (1 + 1e-9)
        if res.stage_of is None:  # nothing to keep: neither a start nor a partition it met
            assert res.status == "beaten" and dp is None
        else:  # the start, or the best partition it met on the way (over the cutoff)
            assert res.status == "feasible" and res.objective_s >= exact[0] * (1 - 1e-9)
            assert dp is None or res.objective_s <= evaluate(problem, dp).objective_s * (1 + 1e-9)
