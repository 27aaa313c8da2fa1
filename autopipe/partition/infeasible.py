"""Explain a problem that fits in no partition: who overflows, by how much, and what would fit."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from autopipe._units import format_size
from autopipe.errors import InfeasiblePlanError, PlanError
from autopipe.partition import baselines
from autopipe.partition.chain import Chain
from autopipe.partition.costs import evaluate, usable
from autopipe.partition.dp import min_bottleneck, min_memory
from autopipe.partition.ilp import solve_ilp
from autopipe.partition.problem import Problem
from autopipe.partition.recompute import fit
from autopipe.plan_format import Device
from autopipe.profile.memory import param_memory
from autopipe.schedule.actions import check_runnable

_SEARCH_SECONDS = 20.0
_RECOMPUTE_SECONDS = 10.0
_LIGHTER = ("sgd-momentum", "sgd")
"""Optimizers a hint may name, by the states they keep, most first."""
_GIB = 2**30
_MIB = 2**20


@dataclass(frozen=True, slots=True, kw_only=True)
class Setting:
    """What ``problem`` was built from beyond itself: what the remedies that rebuild it need."""

    optimizer: str | None = None
    """The optimizer whose states ``problem.param_mem`` charges; None: unknown (no lighter
    optimizer is named)."""
    element_size: int = 4
    """Bytes per element of the parameters."""
    samples: int | None = None
    """Samples in one micro-batch (the profile's); None: unknown (no smaller micro-batch is named)."""


def chain_fits(problem: Problem) -> bool:
    """Whether some split of the chain (the blocks in run order) fits every device (where
    some devices have no limit and others do, it may say no where one fits)."""
    if not any(d.memory > 0 for d in problem.config.devices):
        return True
    found = min_memory(Chain(problem))
    return found is not None and found[0] <= 1.0


def _recompute_hint(problem: Problem, method: str) -> str:
    """``--recompute auto`` with what a split would need, where recomputing makes one fit:
    one of the splits ``plan`` starts from ([Note: remedies that fit]), else, for the ILP,
    the ILP's own within ``_RECOMPUTE_SECONDS`` (``plan``'s MIP has more)."""
    auto = _with_recompute(problem, "auto")
    for stage_of in _starts(auto, method):
        regions = fit(auto, stage_of)
        if regions is not None:
            return _needs(auto, stage_of, regions)
    if method != "ilp":
        return ""
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


# [Note: remedies that fit]
#
# Every remedy the hint names is applied to the problem here and checked the way ``plan``
# would find it (``_found``): among the planner's own starting points, the chain DP's
# fastest split that fits and, for the ILP, the uniform and parameter-balanced layer
# splits, each recomputing what ``fit`` chooses. A split that fits there is one the DP
# returns or the ILP starts from, so the remedy, applied, plans. A remedy that none of them
# fits is not named, though the ILP might find one: the hint promises only what it checked.
# Until 2026-12-07 the stage count was checked by the chain's price alone, which under
# ``--recompute full`` keeps every recomputed block's input: a Qwen2-57B-A14B shape on
# 16 × 80 GB, one layer a stage, was priced at 84 GiB a stage (45 GiB evaluated), no count
# was found, and the one hint left was "smaller micro-batches", of one sample already.


def explain(problem: Problem, method: str = "ilp", setting: Setting | None = None) -> InfeasiblePlanError:
    """The error to raise when ``problem`` has no partition that fits.

    It names the stage and device that overflow in the most memory-balanced chain split
    and lists what that split needs per stage. Its hint names what would fit, each checked
    ([Note: remedies that fit]): recomputation, the fewest stages (devices like the smallest
    one given), the largest smaller micro-batch count where fewer hold fewer in flight
    (GPipe; zb-h1 below p), a lighter optimizer, micro-batches of one sample, and the
    memory a device needs.

    Args:
        problem: the problem nothing fits.
        method: the method that found nothing: ``ilp`` or ``dp`` (a chain split).
        setting: what ``problem`` was built from; None names no optimizer and no smaller
            micro-batch.
    """
    cfg = problem.config
    if cfg.virtual_stages > 1:
        return _explain_chunks(problem, method)
    p = cfg.num_stages
    found = min_memory(Chain(problem), balanced=True)
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
        what += ", recomputing every block that can be,"
    message = (f"no partition into {p} stages fits in memory ({what} searched): the most "
               f"memory-balanced split needs [{needs}]; stage {worst} needs "
               f"{format_size(ev.stages[worst].memory)} but {dev.name} has {format_size(dev.memory)}")
    hints = _remedies(problem, method, setting or Setting())
    if not hints:
        return InfeasiblePlanError(message, hint="no remedy checked here fits (more stages, fewer or smaller "
                                                 "micro-batches, recomputation, a lighter optimizer, more "
                                                 "memory): devices with more memory may")
    return InfeasiblePlanError(message, hint=f"try {'; or '.join(hints)}")


def _remedies(problem: Problem, method: str, setting: Setting) -> list[str]:
    """The hints that fit, each checked ([Note: remedies that fit]), within ``_SEARCH_SECONDS``
    (recomputation's ILP apart: ``_RECOMPUTE_SECONDS``)."""
    cfg = problem.config
    hints: list[str] = []
    auto = _with_recompute(problem, "auto")
    if cfg.recompute == "none":
        hints.append(_recompute_hint(problem, method))
    elif cfg.recompute == "full" and auto.recompute_candidates() and _found(auto, method):
        hints.append("--recompute auto (it recomputes only where that frees memory)")
    deadline = time.monotonic() + _SEARCH_SECONDS
    stages = _stage_hint(problem, method, deadline)
    if not stages and cfg.recompute != "auto" and auto.recompute_candidates() and not any(hints):
        stages = _stage_hint(auto, method, deadline)
        stages += " --recompute auto" if stages else ""
    hints.append(stages)
    hints.append(_microbatch_hint(problem, method, deadline))
    hints.append(_optimizer_hint(problem, method, setting, deadline))
    hints.append(_samples_hint(problem, method, setting, deadline))
    hints.append(_memory_hint(problem, method, deadline))
    return [h for h in hints if h]


def _with_recompute(problem: Problem, mode: str) -> Problem:
    return problem.with_config(replace(problem.config, recompute=mode))


def _found(problem: Problem, method: str) -> bool:
    """Whether ``plan`` with ``method`` finds a partition of ``problem`` that fits by one of
    the splits it starts from ([Note: remedies that fit])."""
    return any(fit(problem, s) is not None for s in _starts(problem, method))


def _starts(problem: Problem, method: str) -> list[list[int]]:
    """The splits ``plan`` with ``method`` starts from: the chain DP's fastest that fits,
    for the ILP also the uniform and parameter-balanced layer splits."""
    # the DP's split exists where the chain's most memory-balanced one fits (one pass of
    # its DP, not the two of the fastest, each pricing time too)
    splits = [min_bottleneck(Chain(problem)) if chain_fits(problem) else None]
    if method != "dp":
        splits += [baselines.uniform(problem), baselines.params(problem)]
    return [s for s in splits if s is not None]


def _stage_hint(problem: Problem, method: str, deadline: float) -> str:
    """``--stages N`` for the fewest stages found to fit (devices like the smallest one given),
    with ``--microbatches M`` where the count checked is not the one the user would get.

    Counts whose parameters, gradients and optimizer states alone exceed the devices are
    skipped; the others are searched doubling the step from ``p + 1``, then halving it
    back between the last count that did not fit and the first that did.
    """
    cfg = problem.config
    p, m = cfg.num_stages, cfg.microbatches
    smallest = min(cfg.devices, key=lambda d: d.memory)
    # every split holds each parameter's memory (with its gradient and optimizer state)
    # on some stage: fewer stages than that needs, at the smallest device's limit, fit never
    states = math.fsum(float(pm.total) for pm in problem.param_mem.values())
    counts = [n for n in range(p + 1, min(problem.num_real, 4 * p + 8) + 1)
              if not (smallest.memory > 0 and states > n * usable(float(smallest.memory)))]

    def fits(n: int) -> bool:
        try:  # 1F1B holds min(m, p−s) and torch runs it only with m ≥ p: more than p never adds
            check_runnable(cfg.schedule, n, _count(cfg.schedule, n, m))
        except PlanError:
            return False
        # its name too: "cpu:0+1" is no device ([Note: device labels])
        return _found(problem.with_config(replace(cfg, num_stages=n, microbatches=_count(cfg.schedule, n, m),
                                                  devices=(smallest,) * n)), method)

    n = _first(counts, fits, deadline)
    if n is None:
        return ""
    m2 = _count(cfg.schedule, n, m)
    given = replace(cfg, num_stages=n, microbatches=m2, devices=(smallest,) * n)
    default = replace(given, microbatches=2 * n)
    if m2 == m and all(given.inflight(s) == default.inflight(s) for s in range(n)):
        return f"--stages {n}"  # as checked whether --microbatches is given or not (2·p)
    return f"--stages {n} --microbatches {m2}"


def _count(schedule: str, n: int, m: int) -> int:
    """The micro-batches a hint of ``n`` stages checks: ``m``, at least ``n`` under 1F1B."""
    return max(m, n) if schedule == "1f1b" else m


def _first(counts: Sequence[int], fits: Callable[[int], bool], deadline: float) -> int | None:
    """The first of ``counts`` that ``fits``, where fitting is monotone: steps of 1, 2, 4, …
    until one fits, then halving back; within ``deadline``, else the first found, if any."""
    below, above = -1, None
    step = 1
    while above is None and below + 1 < len(counts):
        if time.monotonic() > deadline:
            return None
        k = min(below + step, len(counts) - 1)
        if fits(counts[k]):
            above = k
        else:
            below, step = k, 2 * step
    if above is None:
        return None
    while above - below > 1 and time.monotonic() <= deadline:
        k = (below + above) // 2
        if fits(counts[k]):
            above = k
        else:
            below = k
    return counts[above]


def _microbatch_hint(problem: Problem, method: str, deadline: float) -> str:
    """``--microbatches M``, the most fewer than given that fit, where fewer micro-batches hold
    fewer in flight: 1F1B holds min(m, p−s) and torch runs it only with m ≥ p, so fewer never
    help there; GPipe holds all m, zb-h1 min(m, p)."""
    cfg = problem.config
    p, m = cfg.num_stages, cfg.microbatches
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
        if _found(problem.with_config(fewer), method):
            return f"--microbatches {m2}"
    return ""


def _optimizer_hint(problem: Problem, method: str, setting: Setting, deadline: float) -> str:
    """``--optimizer NAME``, the first of ``_LIGHTER`` keeping fewer states than the one
    given that fits."""
    if setting.optimizer is None:
        return ""
    fused = bool(problem.config.devices) and all(d.is_cpu for d in problem.config.devices)

    def kept(name: str) -> int:  # bytes held and stepped per element
        pm = param_memory(setting.element_size, element_size=setting.element_size, optimizer=name, fused=fused)
        return pm.optimizer + pm.step

    for name in _LIGHTER:
        if time.monotonic() > deadline:
            break
        if kept(name) >= kept(setting.optimizer):
            continue
        mem = {}
        for q, pm in problem.param_mem.items():
            new = param_memory(problem.param_bytes[q], element_size=setting.element_size, optimizer=name,
                               fused=fused)
            mem[q] = replace(pm, optimizer=new.optimizer, step=new.step)
        if _found(replace(problem, param_mem=mem), method):
            return f"--optimizer {name} (it keeps fewer states than {setting.optimizer})"
    return ""


def _samples_hint(problem: Problem, method: str, setting: Setting, deadline: float) -> str:
    """Micro-batches of one sample, where they hold more and one sample's activations and
    sends (this profile's scaled down: an estimate) fit."""
    n = setting.samples
    if n is None or n <= 1 or time.monotonic() > deadline:
        return ""
    blocks = tuple(replace(b, activation_bytes=-(-b.activation_bytes // n)) for b in problem.blocks)
    values = tuple(replace(v, bytes=-(-v.bytes // n)) for v in problem.values)
    if not _found(replace(problem, blocks=blocks, values=values), method):
        return ""
    m = problem.config.microbatches
    return (f"micro-batches of 1 sample, not {n} (--batch-size {m} --microbatches {m}; estimated: "
            f"this profile's activations scaled down)")


def _memory_hint(problem: Problem, method: str, deadline: float) -> str:
    """``--memory SIZE`` for every device that fits this many stages: from the most
    memory-balanced chain split's need, rounded up (``_round_up``), raised by tenths until
    one is found to fit."""
    cfg = problem.config
    found = min_memory(Chain(problem))
    if found is None or not all(d.memory > 0 for d in cfg.devices):
        return ""
    size = found[0] * max(float(d.memory) for d in cfg.devices)
    for _ in range(8):
        if time.monotonic() > deadline:
            break
        count, unit = _round_up(size)
        size = count * (_GIB if unit == "GiB" else _MIB)
        devices = tuple(Device(name=d.name, memory=size, speed=d.speed) for d in cfg.devices)
        if _found(problem.with_config(replace(cfg, devices=devices)), method):
            return f"devices with {count} {unit} each (--memory {count}{unit})"
        size = int(size * 1.1)
    return ""


def _round_up(size: float) -> tuple[int, str]:
    """``size`` bytes rounded up to whole MiB below 10 GiB, else whole GiB: (count, unit)."""
    if size >= 10 * _GIB:
        return math.ceil(size / _GIB), "GiB"
    return math.ceil(size / _MIB), "MiB"


def _explain_chunks(problem: Problem, method: str) -> InfeasiblePlanError:
    """``explain`` for chunks on ranks ([Note: chunks]): what the most memory-balanced chain
    split needs per rank; interleaving holds more micro-batches in flight than 1F1B."""
    cfg = problem.config
    found = min_memory(Chain(problem), balanced=True)
    assert found is not None, "a problem with at least p computing blocks has a chain partition"
    ev = evaluate(problem, found[1], _least_recompute(problem, found[1]))
    worst = max(ev.ranks, key=lambda r: r.memory / r.limit)
    r = ev.ranks.index(worst)
    what = "a chain split" if method != "ilp" else "any partition"
    if cfg.recompute != "none":
        what += ", recomputing every block that can be,"
    hint = _recompute_hint(problem, method) if cfg.recompute == "none" else ""
    return InfeasiblePlanError(
        f"no partition into {cfg.num_ranks} ranks × {cfg.virtual_stages} chunks fits in memory "
        f"({what} searched): the most memory-balanced split needs "
        f"[{', '.join(format_size(x.memory) for x in ev.ranks)}] per rank; rank {r} needs "
        f"{format_size(worst.memory)} but {cfg.devices[r].name} has {format_size(worst.limit)}",
        hint=f"try {hint + ', ' if hint else ''}--schedule 1f1b (it holds fewer micro-batches "
             f"in flight), more --stages, or devices with more memory")
