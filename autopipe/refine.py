"""Whole-stage refinement: re-time a plan's stages as the modules the runtime runs and re-solve.

[Note: whole stages, not node sums]
A profile times every node alone. The same nodes run as one stage module take
another time: on the CPU 10–40% less (a node timed alone pays its own call and
cold caches), on a GPU anywhere from 0.6× to 2× (a node timed alone between two
synchronisations cannot hide its host work behind the previous kernels; see
docs/gpu.md). The planner would be optimal for the wrong costs. So after a solve
each stage is run as the runtime will run it (the split GraphModule, forward and
backward: ``autopipe.runtime.timing``), every node takes the ratio measured /
summed of the stage it was just measured in (forward and backward apart, within
``1/MAX_FACTOR``..``MAX_FACTOR``), and the planner solves again on the original
profile times those ratios. When the cuts stay, the scaled profile is exact for
them and that plan is the answer. So is the plan just measured when the re-solve
moves its cuts for less than ``MIN_GAIN`` of its measured step: the timings' noise
is larger than that, and chasing it flips cuts between near-equal splits (in the
noisy runs of 2026-12-01 four to five of seven ILP plans ended their three rounds
with cuts still moving). Cuts that keep moving (ratios of small stages
swing with their fixed call overhead) stop after ``rounds``: the answer is then
the measured round with the fastest step, its stages timed once more: the fastest
of a few noisy measurements reads low, so a prediction at the times it was chosen on
would be biased low (in one ``bench_cost_model`` run the four plans whose cuts kept
moving read 0.61–0.91 of their measured median steps).

    round k:  profile × ratios(k−1) ──solve──▶ cuts_k ──time stages──▶ ratios(k)
              cuts_k = cuts_(k−1), or cuts_k promising < MIN_GAIN: done
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch

from autopipe.partition.finalists import DEFAULT_FINALISTS, finalists, mark_rows, refined_best
from autopipe.partition.mip_time import ROUNDS_SHARE, MipTime
from autopipe.plan_format import Plan
from autopipe.profile.profile import Profile
from autopipe.trace import Graph

DEFAULT_ROUNDS = 3
MAX_FACTOR = 4.0
MIN_GAIN = 0.02
"""A re-solve that moves the cuts must promise at least this share off the step just
measured; a smaller gain is within the timings' noise, and the measured cuts stay."""
WINDOW_S = 1.0
"""Each round's stage timings spread over at least this many seconds ([Note: timing over
a window] in ``autopipe.runtime.timing``), within ``MORE_RUNS`` × ``repeats`` runs."""


def _cuts(plan: Plan) -> tuple[tuple[str, ...], ...]:
    return tuple(s.nodes for s in plan.stages) + tuple(g for s in plan.stages for g in s.recompute)


def refine(plan: Plan, profile: Profile, graph: Graph, args: tuple[Any, ...],
           kwargs: dict[str, Any] | None, replan: Callable[[Profile], Plan], *,
           rounds: int = DEFAULT_ROUNDS, repeats: int = 5, window_s: float = WINDOW_S, together: bool = True,
           loss_fn: Callable[[Any, Any], Any] | None = None, target: Any = None,
           baseline_plan: Callable[..., Plan] | None = None) -> Plan:
    """Re-time ``plan``'s stages as whole modules and re-solve until the cuts stay.

    See [Note: whole stages, not node sums]. The stages run where the model's
    parameters are, in the model's dtype, on the example micro-batch ``(args, kwargs)``,
    with the intra-op threads the profile was measured with.

    Args:
        plan: the plan solved from ``profile``.
        profile: the measured profile ``plan`` was solved from.
        graph: the traced model.
        replan: solves again on a (scaled) profile, with the same options.
        rounds: stage timings at most (each but a last converged one is followed by a solve).
        repeats: timed runs of each stage (medians are kept), at least.
        window_s: more runs while under this many seconds have passed (a machine's speed
            drifts over seconds: [Note: timing over a window] in ``autopipe.runtime.timing``).
        together: time every rank's stages at once, each rank in a process of its own
            on its own cores (on the CPU; ``autopipe.runtime.timing_together``); else one
            stage after another in this process.
        loss_fn, target: the training loss and one micro-batch's target: the last stage's
            rank runs it after the stage, as the runtime does, and the plan takes its times
            from there (else the profile's loss, timed alone, is added to that stage).
        baseline_plan: ``baseline_plan(profile, method, **choice)`` plans ``profile`` by a
            baseline method (``dp``, ``uniform``, ``params``) for the ranks, micro-batches,
            schedule and chunks in ``choice`` (``choice_of``'s keywords but the batch size),
            with ``replan``'s other options; given,
            where the cuts did not settle, a baseline priced faster than the plan kept is
            timed beside it ([Note: a faster baseline timed] in ``autopipe.refine_baselines``).

    Returns:
        The refined plan, with ``options["refine"]``: per round the stages' measured /
        summed ratios and whether the next solve moved the cuts, ``converged``, and a
        baseline timed beside the plan kept (``baseline_timed``) or passed over
        (``baseline_skipped``).
    """
    from autopipe.runtime.split import split_graph
    from autopipe.runtime.stage import fuse_as_planned
    from autopipe.runtime.timing import time_stages
    from autopipe.runtime.timing_together import together_reason
    from autopipe.schedule.plan_costs import plan_runtime

    flat = graph.flat_inputs(args, kwargs)
    names = [n.name for n in graph.gm.graph.nodes if n.op == "placeholder"]
    constants = {n: v for n, v in zip(names, flat) if not isinstance(v, torch.Tensor)}
    tensors = [v for v in flat if isinstance(v, torch.Tensor)]
    record: list[dict[str, Any]] = []
    measured: list[Plan] = []
    ratio: dict[str, tuple[float, float]] = {}
    idle_s = float(profile.runtime.get("send_latency_s", 0.0))
    tied = {n for group in graph.tied for n in group}
    current = plan
    why_not = together_reason(tensors) if together else "not asked"
    # the last stage also runs the loss, which the stage module leaves to the schedule
    loss_f, loss_b = (profile.loss.forward_s, profile.loss.backward_s) if profile.loss else (0.0, 0.0)
    with_loss = loss_fn is not None and target is not None and profile.loss is not None
    def timed(plan: Plan) -> tuple[Plan, list[tuple[float, float]], tuple[float, float] | None]:
        """``plan`` at its stages' measured times; the stages' measured / summed ratios; the loss's times."""
        nonlocal loss_f, loss_b
        split = split_graph(graph, plan, constants)

        def stage_loss(outs: tuple[Any, ...]) -> Any:
            assert loss_fn is not None
            return loss_fn(graph.unflatten_output(split.rebuild_outputs(outs)), target)

        with _conditions_of(profile, tensors):
            # each action after blocking one send latency, as a rank waits for its peer
            # ([Note: compute after a wait] in autopipe.runtime.calibrate); every rank's
            # stages at once, as training runs them ([Note: stages timed together])
            # each rank's step in its schedule's order, its weight gradients added in place
            # as the runtime's are ([Note: stages timed in their schedule's order])
            times = time_stages(split, tensors, repeats=repeats, min_s=window_s, idle_s=idle_s,
                                ranks=ranks_of(plan), together=together,
                                loss=stage_loss if with_loss else None, programs=rank_programs(plan),
                                prepare=functools.partial(fuse_as_planned, plan=plan, tied=tied,
                                                          device=tensors[0].device if tensors else torch.device("cpu")))
        if times.loss_s is not None:  # the loss as timed on its rank among the others
            loss_f, loss_b = times.loss_s
        # every action pays the runtime's own work around the module (as planned)
        rt = plan_runtime(plan)
        fo, bo = rt.get("forward_overhead_s", 0.0), rt.get("backward_overhead_s", 0.0)
        last = len(times.forward_s) - 1
        at_times = with_stage_times(
            plan, [f + fo + (loss_f if i == last else 0.0) for i, f in enumerate(times.forward_s)],
            [b + bo + (loss_b if i == last else 0.0) for i, b in enumerate(times.backward_s)])
        return at_times, stage_factors(profile, plan, times.forward_s, times.backward_s), times.loss_s

    solved: list[Plan] = []  # the solve on each round's measured costs
    costs: list[Profile] = []  # each round's measured costs
    for _ in range(max(1, rounds)):
        at_times, factors, loss_s = timed(current)
        measured.append(at_times)
        for name, s in current.stage_of.items():
            ratio[name] = factors[s]
        costs.append(scale_nodes(profile, ratio, loss=(loss_f, loss_b) if loss_s else None))
        nxt = replan(costs[-1])
        solved.append(nxt)
        moved = _cuts(nxt) != _cuts(current)
        gain = 1.0 - nxt.predicted.iteration_s / at_times.predicted.iteration_s
        small = moved and gain < MIN_GAIN  # within the noise: the measured cuts stay
        record.append({"forward_ratio": [round(f, 4) for f, _ in factors],
                       "backward_ratio": [round(b, 4) for _, b in factors],
                       "measured_step_s": measured[-1].predicted.iteration_s, "cuts_moved": moved and not small,
                       **({"gain_kept_out": round(gain, 4)} if small else {}),
                       **({"loss_s": [round(t, 7) for t in loss_s]} if loss_s else {})})
        if small:
            return _recorded(_accounted(at_times, nxt, (loss_f, loss_b) if profile.loss else None),
                             record, converged=True, why_not=why_not)
        if not moved:
            return _recorded(nxt, record, converged=True, why_not=why_not)
        current = nxt
    # the fastest of noisy measurements reads low: its cuts are timed once more for the
    # prediction ([Note: whole stages, not node sums])
    best = min(measured, key=lambda p: p.predicted.iteration_s)
    k = measured.index(best)
    again, _, _ = timed(best)
    record[k]["timed_again_step_s"] = again.predicted.iteration_s
    kept = _accounted(again, solved[k], (loss_f, loss_b) if profile.loss else None)
    if baseline_plan is None:
        return _recorded(kept, record, converged=False, why_not=why_not)
    # [Note: a faster baseline timed] in autopipe.refine_baselines
    one = {key: v for key, v in choice_of(best).items() if key != "batch_size"}  # not a schedule search's
    from autopipe.refine_baselines import beside_baselines, measured_entries

    chosen, extra, theirs = beside_baselines(kept, best, again, lambda p: timed(p)[0],
                                              functools.partial(baseline_plan, costs[k], **one))
    if theirs:  # each at the mean of its two timings, as the plan kept is
        kept = _accounted(chosen, solved[k], (loss_f, loss_b) if profile.loss else None)
        kept = dataclasses.replace(kept, baselines=measured_entries(kept.baselines, theirs))
    return _recorded(kept, record, converged=False, why_not=why_not, extra=extra)


def _accounted(timed: Plan, solved: Plan, loss: tuple[float, float] | None) -> Plan:
    """``timed``, a plan at its stages' measured times, accounted on the costs of that
    measurement, as its prediction is: the baselines and the lower bound of ``solved`` (the
    solve on the profile scaled to it), the solver's objective its own predicted step, and
    the loss's times as last timed.

    Before (until 2026-12-06) such a plan kept the solver block and baselines of the solve
    that had chosen its cuts, on the previous round's costs: ``autopipe plan`` on GPT-2 then
    printed a predicted step of 334.8 ms beside an objective of 318.1 ms and the chain
    DP's split at 318.8 ms, "-4.8%" against a plan that was the better one on both.
    """
    options = dict(timed.options)
    if loss is not None and "loss" in options:
        options["loss"] = {"forward_s": loss[0], "backward_s": loss[1]}
    if (solved.schedule, solved.microbatches, solved.num_stages) != (
            timed.schedule, timed.microbatches, timed.num_stages):
        # a search's re-solve chose another candidate: its bounds and baselines are not this one's
        return dataclasses.replace(timed, options=options)
    step = timed.predicted.iteration_s
    sv = solved.solver
    lower = min(sv.lower_bound_s, step)
    gap = (step - lower) / step if step > 0 else 0.0
    tolerance = float(timed.options.get("mip_gap", 0.0) or 0.0)
    status = "feasible" if sv.status == "optimal" and gap > tolerance + 1e-12 else sv.status
    solver = dataclasses.replace(sv, status=status, objective_s=step, lower_bound_s=lower, gap=gap)
    return dataclasses.replace(timed, solver=solver, baselines=solved.baselines, options=options)


SEARCH_RECORD = ("search", "batch_size", "microbatch_size")
"""What a search records in a plan's options, kept by ``refine_candidate`` (not its lower
bound: of node sums, it bounds no re-timed step)."""


def choice_of(plan: Plan) -> dict[str, Any]:
    """The options that make a search's ``plan`` its one candidate again: its ranks,
    micro-batches, schedule and chunks (``plan_profile``'s keywords; no batch-size search)."""
    ranks = len(set(ranks_of(plan)))
    return {"num_stages": ranks, "microbatches": plan.microbatches, "schedule": plan.schedule,
            "virtual_stages": plan.num_stages // ranks if plan.num_stages > ranks else None,
            "batch_size": None}


def refine_candidate(plan: Plan, profile: Profile, graph: Graph, args: tuple[Any, ...],
                     kwargs: dict[str, Any] | None, replan: Callable[[Profile], Plan],
                     **options: Any) -> Plan:
    """``refine`` for the candidate a search chose (over micro-batch sizes, or over
    pipeline × data-parallel degrees): ``replan`` solves that candidate alone, on
    ``profile``, the profile of its micro-batch size, traced as ``graph`` from ``args,
    kwargs``. The search's rows stay as they were: the candidates were compared on their
    node sums. A ``plan`` refined before is timed again: its rounds are kept before the new
    ones, from ``timed_again_from`` ([Note: finalists re-timed] in ``autopipe.partition.finalists``).

    Until 2026-12-06 a plan of a batch-size search was not refined at all, nor one of a
    degree search (``--gpus``) until 2026-12-07: they predicted their steps on node sums.
    """
    refined = refine(plan, profile, graph, args, kwargs, replan, **options)
    kept = {k: v for k, v in refined.options.items() if k != "search_lower_bound_s"}
    earlier = plan.options.get("refine")
    if isinstance(earlier, dict):  # refined before: timed again ([Note: finalists re-timed])
        kept["refine"] = {**kept["refine"], "rounds": [*earlier["rounds"], *kept["refine"]["rounds"]],
                          "timed_again_from": len(earlier["rounds"])}
    return dataclasses.replace(refined, options={
        **kept, **{k: plan.options[k] for k in SEARCH_RECORD if k in plan.options}})


def refine_search(found: Plan, profiles: Mapping[int, Profile], solve: Callable[..., Plan],
                  refine_one: Callable[[Plan, int, Callable[[Profile], Plan]], Plan],
                  limit: int = DEFAULT_FINALISTS, mip: MipTime | None = None) -> Plan:
    """A batch-size search's ``found`` plan, with its finalists re-timed as whole stages and
    the fastest re-timed one kept ([Note: finalists re-timed] in ``autopipe.partition.finalists``).

    Args:
        found: the search's plan (``options["search"]``: every candidate's row).
        profiles: the measured profile of each micro-batch size.
        solve: ``solve(profile, **choice)`` plans one candidate alone (``choice_of``'s keywords).
        refine_one: ``refine_one(plan, size, replan)``, the refined plan of a candidate of
            micro-batches of ``size`` (``plan`` itself where it cannot be refined).
        limit: finalists at most.
        mip: the command's MIP time, held for the solves here ([Note: time kept for the
            re-solves] in ``autopipe.partition.mip_time``): released to them.

    Returns:
        The winner, refined, with the search's rows (each finalist's ``refined_s``, the
        winner's ``retimed_s`` where it was timed again) and its own micro-batch size.
    """
    ranks = len(set(ranks_of(found)))
    rows = [dict(r) for r in found.options["search"]]
    solved = [r for r in rows if isinstance(r.get("iteration_s"), (int, float))]
    ranked = sorted(solved, key=lambda r: r["iteration_s"])  # stable: ties in the search's order
    finals = [ranked[k] for k in finalists([r["iteration_s"] for r in ranked], limit)]
    if mip is not None:  # each finalist but the search's own plan solved alone first
        mip.share_among(ROUNDS_SHARE * (len(finals) + (len(finals) > 1)))

    def choice(row: dict[str, Any]) -> dict[str, Any]:
        return {"num_stages": ranks, "microbatches": row["microbatches"], "schedule": row["schedule"],
                "virtual_stages": row.get("virtual_stages"), "batch_size": None}

    starts = [found if choice(r) == choice_of(found) else solve(profiles[r["microbatch_size"]], **choice(r))
              for r in finals]

    def refined(k: int, plan: Plan) -> Plan:
        row = finals[k]
        return refine_one(plan, row["microbatch_size"], lambda p: solve(p, **choice(row)))

    k, done, again = refined_best(starts, refined, mip)
    kept = mark_rows(finals, starts, done, k, again)
    return dataclasses.replace(kept, options={
        **{o: v for o, v in kept.options.items() if o != "search_lower_bound_s"},
        "search": rows, "batch_size": found.options["batch_size"],
        "microbatch_size": finals[k]["microbatch_size"]})


def rank_programs(plan: Plan) -> dict[int, list[tuple[int, str, int]]]:
    """Each rank's forwards and backwards in one step of ``plan``'s schedule, in order
    (``autopipe.runtime.timing.Program``); a split-off weight pass runs inside its backward."""
    from autopipe.schedule.actions import schedule_order

    ranks = ranks_of(plan)
    p = len(set(ranks))
    order = schedule_order(plan.schedule, p, plan.microbatches, plan.num_stages // p)
    return {ranks[program[0].stage]: [(a.stage, a.kind, a.microbatch) for a in program if a.kind != "W"]
            for program in order.ranks if program}


def ranks_of(plan: Plan) -> list[int]:
    """The rank each of ``plan``'s stages runs on (its ``rank``, else its index)."""
    return [i if s.rank is None else s.rank for i, s in enumerate(plan.stages)]


def _recorded(plan: Plan, record: list[dict[str, Any]], *, converged: bool, why_not: str | None,
              extra: dict[str, Any] | None = None) -> Plan:
    timed = "together" if why_not is None else f"one at a time ({why_not})"
    return dataclasses.replace(plan, options={**plan.options, "refine": {
        "rounds": record, "converged": converged, "timed": timed, **(extra or {})}})


def stage_factors(profile: Profile, plan: Plan, forward_s: Sequence[float],
                  backward_s: Sequence[float]) -> list[tuple[float, float]]:
    """Per stage of ``plan``, measured / summed forward and backward (1 where a sum is zero),
    kept within ``1/MAX_FACTOR``..``MAX_FACTOR``. A recomputed node's forward runs again in
    its stage's backward ([Note: recomputed regions]) and counts in the backward's sum; so
    does a node of an earlier stage in the forward's sum of a stage that makes its value
    again ([Note: values made again] in ``autopipe.trace.remade``)."""
    stage_of = plan.stage_of
    again = {n for s in plan.stages for group in s.recompute for n in group}
    fsum = [0.0] * plan.num_stages
    bsum = [0.0] * plan.num_stages
    for n in profile.nodes:
        s = stage_of.get(n.name)
        if s is not None:
            fsum[s] += n.forward_s
            bsum[s] += n.backward_s + (n.forward_s if n.name in again else 0.0)
    by_name = profile.by_name
    for stage in plan.stages:
        fsum[stage.index] += sum(by_name[n].forward_s for n in stage.remade if n in by_name)

    def ratio(measured: float, summed: float) -> float:
        return min(MAX_FACTOR, max(1 / MAX_FACTOR, measured / summed)) if summed > 0 else 1.0

    return [(ratio(f, a), ratio(b, c)) for f, a, b, c in zip(forward_s, fsum, backward_s, bsum)]


def scale_nodes(profile: Profile, ratio: dict[str, tuple[float, float]],
                loss: tuple[float, float] | None = None) -> Profile:
    """``profile`` with each named node's forward and backward times multiplied by its ratios,
    and with ``loss`` its loss's forward and backward seconds replaced."""
    nodes = []
    for n in profile.nodes:
        ff, fb = ratio.get(n.name, (1.0, 1.0))
        nodes.append(dataclasses.replace(n, forward_s=n.forward_s * ff,
                                         backward_input_s=n.backward_input_s * fb,
                                         backward_weight_s=n.backward_weight_s * fb))
    timed_loss = profile.loss
    if loss is not None and timed_loss is not None:
        timed_loss = dataclasses.replace(timed_loss, forward_s=loss[0], backward_s=loss[1])
    return dataclasses.replace(profile, nodes=tuple(nodes), loss=timed_loss,
                               meta={**profile.meta, "scaled_to_stages": True})


def with_stage_times(plan: Plan, forward_s: Sequence[float], backward_s: Sequence[float]) -> Plan:
    """``plan`` with its stages at the given times (the weight-gradient share kept) and its
    step simulated again (plus what the planner added beyond the simulation: tied sync)."""
    from autopipe.schedule import simulate_plan

    extra = plan.predicted.iteration_s - simulate_plan(plan).iteration_s
    stages = tuple(dataclasses.replace(
        s, forward_s=f, backward_s=b,
        backward_weight_s=s.backward_weight_s * (b / s.backward_s) if s.backward_s > 0 else 0.0)
        for s, f, b in zip(plan.stages, forward_s, backward_s))
    timed = dataclasses.replace(plan, stages=stages)
    sim = simulate_plan(timed)
    predicted = dataclasses.replace(plan.predicted, iteration_s=sim.iteration_s + max(0.0, extra),
                                    bubble_fraction=sim.bubble_fraction)
    return dataclasses.replace(timed, predicted=predicted)


@contextlib.contextmanager
def _conditions_of(profile: Profile, tensors: Sequence[torch.Tensor]) -> Iterator[None]:
    """On the CPU, the conditions the profile was measured in: its intra-op threads (one by
    default) and subnormals flushed where it flushed them; the stages are timed as the nodes were."""
    from autopipe.profile._setup import cpu_threads, denormals_flushed

    threads = profile.meta.get("threads")
    cpu = torch.device("cpu")
    if not all(t.device.type == "cpu" for t in tensors):
        yield
        return
    with contextlib.ExitStack() as stack:
        if isinstance(threads, int) and threads >= 1:
            stack.enter_context(cpu_threads(threads, cpu))
        if profile.meta.get("flush_denormal"):
            stack.enter_context(denormals_flushed(cpu))
        yield


def can_refine(graph: Graph, profile: Profile) -> str | None:
    """Why ``profile``'s plan cannot be refined on ``graph`` here; None when it can.

    Refinement re-times the stages as they are: on the device the model lives on, in
    its own dtype, which must be where and how the profile was measured.
    """
    if profile.method != "measure":
        return f"the profile is {profile.method}d, not measured"
    tensors = [*graph.gm.parameters(), *graph.gm.buffers()]
    device = tensors[0].device if tensors else torch.device("cpu")
    if device.type == "meta":
        return "the model is on the meta device"
    where = "cpu" if device.type == "cpu" else f"cuda:{torch.cuda.get_device_name(device)}"
    if profile.device != where:
        return f"the profile was measured on {profile.device}, the model is on {where}"
    floats = {str(t.dtype).removeprefix("torch.") for t in tensors if t.is_floating_point()}
    if floats and floats != {profile.dtype}:
        return f"the profile is in {profile.dtype}, the model in {', '.join(sorted(floats))}"
    return None
