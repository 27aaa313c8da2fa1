"""Explain a problem that fits in no partition: who overflows, by how much, and what would fit."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import replace

from autopipe._units import format_size
from autopipe.errors import InfeasiblePlanError, PlanError
from autopipe.partition import baselines
from autopipe.partition.chain import Chain
from autopipe.partition.costs import evaluate, usable
from autopipe.partition.dp import min_memory
from autopipe.partition.ilp import solve_ilp
from autopipe.partition.problem import Problem
from autopipe.partition.recompute import fit
from autopipe.schedule.actions import check_runnable, check_schedule

_SEARCH_SECONDS = 20.0
_RECOMPUTE_SECONDS = 10.0


def chain_fits(problem: Problem) -> bool:
    """Whether some split of the chain (the blocks in run order) fits every device (where
    some devices have no limit and others do, it may say no where one fits)."""
    if not any(d.memory > 0 for d in problem.config.devices):
        return True
    found = min_memory(Chain(problem))
    return found is not None and found[0] <= 1.0


def _recompute_hint(problem: Problem) -> str:
    """``--recompute auto`` with what a split would need, where recomputing makes one fit:
    a heuristic split's, else the ILP's within ``_RECOMPUTE_SECONDS``."""
    auto = problem.with_config(replace(problem.config, recompute="auto"))
    splits = [found[1] for found in (min_memory(Chain(auto)),) if found is not None]
    splits += [s for s in (baselines.uniform(auto), baselines.params(auto)) if s is not None]
    for stage_of in splits:
        regions = fit(auto, stage_of)
        if regions is not None:
            return _needs(auto, stage_of, regions)
    res = solve_ilp(auto, time_limit=_RECOMPUTE_SECONDS, gap=0.05, break_ties=False)
    if res.stage_of is None:
        return ""
    return _needs(auto, res.stage_of, res.recompute)


def _least_recompute(problem: Problem, stage_of: Sequence[int]) -> tuple[int, ...]:
    """The blocks to recompute in ``stage_of`` for the least memory a stage, of three
    choices per stage: none, the candidates that ``Chain`` prices as recomputed
    (``Chain.freed``: each that frees more than it brings back, alone), or every candidate
    (``config.recompute`` allowing). ``evaluate`` recomputes none for ``auto``: a Gemma-2-27B
    shape in 8 stages was said to need up to 338 GiB a stage "recomputing every block that
    can be", priced without recomputation, where recomputing every block needs 100 GiB; and
    ``Chain``'s choice keeps every block's input where a region of them keeps its first's."""
    cfg = problem.config
    if cfg.recompute == "none":
        return ()
    candidates = problem.recompute_candidates()
    prices = Chain(problem)

    def frees(b: int) -> bool:  # recomputing b alone frees memory on its stage (Chain.freed)
        freed = prices.freed(cfg.inflight(stage_of[b]))
        return bool(freed[b + 1] > freed[b])

    chain = tuple(b for b in candidates if cfg.recompute == "full" or frees(b))
    choices = [(), chain, tuple(candidates)]
    memory = [[s.memory for s in evaluate(problem, stage_of, c).stages] for c in choices]
    best = [min(range(len(choices)), key=lambda k: memory[k][s]) for s in range(cfg.num_stages)]
    return tuple(b for b in candidates if b in choices[best[stage_of[b]]])


def _needs(problem: Problem, stage_of: Sequence[int], recompute: Sequence[int]) -> str:
    ev = evaluate(problem, stage_of, recompute)
    sizes = ", ".join(format_size(s.memory) for s in ev.ranks or ev.stages)
    per = " per rank" if ev.ranks else ""
    return f"--recompute auto (recomputing activations, a split needs [{sizes}]{per})"


def explain(problem: Problem, method: str = "ilp") -> InfeasiblePlanError:
    """The error to raise when ``problem`` has no partition that fits.

    It names the stage and device that overflow in the most memory-balanced chain
    split, lists what that split needs per stage, and searches for the smallest stage
    count (devices like the smallest one given) and the largest smaller micro-batch count
    that would fit, where fewer micro-batches hold fewer in flight (GPipe; zb-h1 below p).
    """
    cfg = problem.config
    if cfg.virtual_stages > 1:
        return _explain_chunks(problem, method)
    p, m = cfg.num_stages, cfg.microbatches
    found = min_memory(Chain(problem))
    if found is None:  # no split in run order: non-tensor values and pins leave no cut there
        return InfeasiblePlanError(
            f"no partition into {p} stages fits in memory, and no split of the model in the order "
            f"it runs exists to compare against the devices (the values between its blocks are "
            f"not tensors, so they cannot be sent)",
            hint="use fewer stages, give the devices more memory, or make the values tensors")
    _, stage_of = found
    ev = evaluate(problem, stage_of, _least_recompute(problem, stage_of))
    ratios = [s.memory / s.limit for s in ev.stages]
    worst = ratios.index(max(ratios))
    dev = cfg.devices[worst]
    needs = ", ".join(format_size(s.memory) for s in ev.stages)
    what = "a chain split" if method != "ilp" else "any partition"
    if cfg.recompute != "none":
        what += ", recomputing every block that can be"
    message = (f"no partition into {p} stages fits in memory ({what} searched): the most "
               f"memory-balanced split needs [{needs}]; stage {worst} needs "
               f"{format_size(ev.stages[worst].memory)} but {dev.name} has {format_size(dev.memory)}")
    hints: list[str] = []
    if cfg.recompute == "none":
        hint = _recompute_hint(problem)
        if hint:
            hints.append(hint)
    deadline = time.monotonic() + _SEARCH_SECONDS
    smallest = min(cfg.devices, key=lambda d: d.memory)
    # every split holds each parameter's memory (with its gradient and optimizer state)
    # on some stage: fewer stages than that needs, at the smallest device's limit, are
    # skipped without a search
    states = math.fsum(float(pm.total) for pm in problem.param_mem.values())
    for p2 in range(p + 1, min(problem.num_real, 4 * p + 8) + 1):
        if time.monotonic() > deadline:
            break
        if smallest.memory > 0 and states > p2 * usable(float(smallest.memory)):
            continue
        try:
            check_schedule(cfg.schedule, p2, m, 1)  # zb-h1's rounds must divide m
        except PlanError:
            continue
        devices = (smallest,) * p2  # its name too: "cpu:0+1" is no device ([Note: device labels])
        if chain_fits(problem.with_config(replace(cfg, num_stages=p2, devices=devices))):
            hints.append(f"--stages {p2}")
            break
    # 1F1B holds min(m, p−s) micro-batches and torch runs it only with m ≥ p: fewer
    # micro-batches never help there; GPipe holds all m, zb-h1 min(m, p)
    held = [cfg.inflight(s) for s in range(p)]
    for m2 in range(m - 1, 0, -1):
        if time.monotonic() > deadline:
            break
        try:
            check_runnable(cfg.schedule, p, m2)
        except PlanError:
            continue
        fewer = replace(cfg, microbatches=m2)
        if all(fewer.inflight(s) >= held[s] for s in range(p)):
            continue
        if chain_fits(problem.with_config(fewer)):
            hints.append(f"--microbatches {m2}")
            break
    hints.append("smaller micro-batches (--batch-size B --microbatches auto tries each size)")
    return InfeasiblePlanError(message, hint=f"try {' or '.join(hints)}; or devices with more memory")


def _explain_chunks(problem: Problem, method: str) -> InfeasiblePlanError:
    """``explain`` for chunks on ranks ([Note: chunks]): what the most memory-balanced chain
    split needs per rank; interleaving holds more micro-batches in flight than 1F1B."""
    cfg = problem.config
    found = min_memory(Chain(problem))
    assert found is not None, "a problem with at least p computing blocks has a chain partition"
    ev = evaluate(problem, found[1], _least_recompute(problem, found[1]))
    worst = max(ev.ranks, key=lambda r: r.memory / r.limit)
    r = ev.ranks.index(worst)
    what = "a chain split" if method != "ilp" else "any partition"
    if cfg.recompute != "none":
        what += ", recomputing every block that can be"
    hint = _recompute_hint(problem) if cfg.recompute == "none" else ""
    return InfeasiblePlanError(
        f"no partition into {cfg.num_ranks} ranks × {cfg.virtual_stages} chunks fits in memory "
        f"({what} searched): the most memory-balanced split needs "
        f"[{', '.join(format_size(x.memory) for x in ev.ranks)}] per rank; rank {r} needs "
        f"{format_size(worst.memory)} but {cfg.devices[r].name} has {format_size(worst.limit)}",
        hint=f"try {hint + ', ' if hint else ''}--schedule 1f1b (it holds fewer micro-batches "
             f"in flight), more --stages, or devices with more memory")
