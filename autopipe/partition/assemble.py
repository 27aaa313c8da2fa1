"""Turn a block → stage assignment into Plan stages: nodes, modules, costs, memory, sends."""

from __future__ import annotations

from collections.abc import Sequence

from autopipe.partition.costs import Evaluation, optimizer_steps
from autopipe.partition.costs import regions as regions_of
from autopipe.partition.problem import Problem
from autopipe.plan_format import Baseline, Send, Stage, StageMemory


def node_stages(problem: Problem, stage_of: Sequence[int]) -> dict[str, int]:
    """Node name → stage."""
    return {n: stage_of[i] for i, b in enumerate(problem.blocks) for n in b.nodes}


def owned_modules(problem: Problem, node_stage: dict[str, int], *, groups: int | None = None,
                  split: frozenset[str] = frozenset()) -> list[list[str]]:
    """Per stage, the outermost module paths whose nodes all lie in it, in graph order.

    ``groups``: how many groups ``node_stage`` numbers (default the stages); modules in
    ``split`` are never listed whole (their children are).
    """
    stages_of: dict[str, set[int]] = {}
    order: dict[str, int] = {}
    for name in problem.node_order:
        module = problem.node_module.get(name, "")
        if not module:
            continue
        parts = module.split(".")
        for k in range(1, len(parts) + 1):
            prefix = ".".join(parts[:k])
            stages_of.setdefault(prefix, set()).add(node_stage[name])
            order.setdefault(prefix, len(order))
    out: list[list[str]] = [[] for _ in range(groups or problem.config.num_stages)]
    for module in sorted(stages_of, key=order.__getitem__):
        if len(stages_of[module]) != 1 or module in split:
            continue
        parent = module.rpartition(".")[0]
        if parent and len(stages_of.get(parent, ())) == 1 and parent not in split:
            continue  # the parent is listed instead
        out[next(iter(stages_of[module]))].append(module)
    return out


def sends(problem: Problem, stage_of: Sequence[int]) -> list[list[Send]]:
    """Per stage s, the tensors crossing boundary s to stage s+1 (passed-through ones too)."""
    order = {n: i for i, n in enumerate(problem.node_order)}
    out: list[list[Send]] = [[] for _ in range(problem.config.num_stages)]
    for v in sorted(problem.values, key=lambda v: order.get(v.node, 0)):
        if (v.bytes == 0 and not v.is_tensor) or v.order_only or v.remade:
            continue
        last = max(stage_of[d] for d in v.dsts)
        for s in range(stage_of[v.src], last):
            out[s].append(Send(tensor=v.node, bytes=v.bytes, to_stage=s + 1,
                               forward_only=problem.forward_only(v), no_grad=v.no_grad))
    return out


_RANKS_INFERRED = ("1f1b", "gpipe")
"""Schedules whose runtime places stage s on rank s without the plan saying so; the others
(zb-h1 runs through torch's interleaved zero-bubble class) get ``rank`` written."""


def stages(problem: Problem, stage_of: Sequence[int], ev: Evaluation) -> tuple[Stage, ...]:
    """The Plan's stages for an evaluated assignment (one stage per rank)."""
    node_stage = node_stages(problem, stage_of)
    members: list[list[str]] = [[] for _ in range(problem.config.num_stages)]
    for name in problem.node_order:
        members[node_stage[name]].append(name)
    modules = owned_modules(problem, node_stage)
    out_sends = sends(problem, stage_of)
    remade = problem.remade_in(stage_of)
    write_rank = problem.config.schedule not in _RANKS_INFERRED
    steps = optimizer_steps(problem, stage_of)
    order = {n: i for i, n in enumerate(problem.node_order)}
    regions: list[list[tuple[str, ...]]] = [[] for _ in range(problem.config.num_stages)]
    for region in regions_of(stage_of, ev.recompute, problem.region_breaks()):  # one checkpointed group each
        nodes = [n for b in region for n in problem.blocks[b].nodes]
        regions[stage_of[region[0]]].append(tuple(sorted(nodes, key=lambda n: order.get(n, 0))))
    result = []
    for s, cost in enumerate(ev.stages):
        result.append(Stage(
            index=s, device=problem.config.devices[s].name, nodes=tuple(members[s]),
            modules=tuple(modules[s]), forward_s=cost.forward_s, backward_s=cost.backward_s,
            memory=StageMemory(params=cost.params, grads=cost.grads, optimizer=cost.optimizer,
                               activations=cost.activations, buffers=cost.buffers, total=cost.memory,
                               optimizer_step=cost.optimizer_step, workspace=cost.workspace,
                               batch=cost.batch, library=cost.library),
            sends=tuple(out_sends[s]), backward_weight_s=cost.backward_weight_s, comm_s=cost.comm_s,
            optimizer_s=steps[s], rank=problem.config.rank_of(s) if write_rank else None,
            recompute=tuple(sorted(regions[s], key=lambda g: order.get(g[0], 0))),
            recompute_s=cost.recompute_s, remade=remade[s]))
    return tuple(result)


def baseline(problem: Problem, stage_of: Sequence[int] | None, ev: Evaluation | None,
             iteration_s: float | None) -> Baseline:
    """What a baseline method gives (iteration time None when it does not fit or exists)."""
    if stage_of is None or ev is None:
        return Baseline(iteration_s=None)
    counts = [0] * problem.config.num_stages
    for i, b in enumerate(problem.blocks):
        counts[stage_of[i]] += len(b.nodes)
    # as Stage.time_s: compute plus communication per micro-batch
    times = [s.busy_s + s.comm_s for s in ev.stages]
    worst = times.index(max(times))
    return Baseline(iteration_s=iteration_s if ev.fits else None, bottleneck_stage=worst,
                    max_memory=ev.max_memory, stage_nodes=tuple(counts), bottleneck_s=times[worst])
