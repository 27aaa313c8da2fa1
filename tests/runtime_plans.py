"""Hand-made plans for the runtime tests: contiguous cuts of the topological order."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from autopipe import Graph
from autopipe.plan_format import Device, Plan, Predicted, SolverInfo, Stage, StageMemory


def valid_cuts(graph: Graph) -> list[int]:
    """Positions ``i`` where cutting after ``graph.nodes[i]`` sends only tensors."""
    index = {n.name: i for i, n in enumerate(graph.nodes)}
    last_use = {n.name: i for i, n in enumerate(graph.nodes)}
    for i, n in enumerate(graph.nodes):
        for a in n.inputs:
            last_use[a] = max(last_use[a], i)
    first_body = max(i for i, n in enumerate(graph.nodes) if n.op == "placeholder")
    cuts = []
    for i in range(first_body + 1, len(graph.nodes) - 2):
        if all(graph.by_name[v].is_tensor for v in last_use
               if index[v] <= i < last_use[v] and graph.by_name[v].op != "placeholder"):
            cuts.append(i)
    return cuts


def balanced_cuts(graph: Graph, num_stages: int) -> list[int]:
    """Cut points that give each stage about the same parameter bytes (nodes break ties)."""
    cuts = valid_cuts(graph)
    weight = [sum(graph.param_bytes[p] for p in n.params) + 1 for n in graph.nodes]
    total = sum(weight)
    prefix, acc = [], 0
    for w in weight:
        acc += w
        prefix.append(acc)
    chosen: list[int] = []
    for k in range(1, num_stages):
        target = total * k / num_stages
        options = [c for c in cuts if not chosen or c > chosen[-1]]
        best = min(options, key=lambda c: abs(prefix[c] - target))
        chosen.append(best)
    return chosen


def plan_from_cuts(graph: Graph, cuts: Sequence[int], *, microbatches: int = 4,
                   schedule: str = "1f1b", ranks: Sequence[int] | None = None,
                   device: str = "cpu") -> Plan:
    """A Plan whose stage ``k`` holds the nodes between cut ``k-1`` and cut ``k`` (predictions zero)."""
    bounds = [-1, *cuts, len(graph.nodes) - 1]
    zero = StageMemory(params=0, grads=0, optimizer=0, activations=0, buffers=0, total=0)
    stages = tuple(
        Stage(index=k, device=device, nodes=tuple(n.name for n in graph.nodes[bounds[k] + 1:bounds[k + 1] + 1]),
              modules=(), forward_s=0.0, backward_s=0.0, memory=zero,
              rank=None if ranks is None else ranks[k])
        for k in range(len(bounds) - 1))
    num_ranks = len(set(ranks)) if ranks is not None else len(stages)
    return Plan(
        graph_fingerprint=graph.fingerprint, schedule=schedule, microbatches=microbatches,
        devices=tuple(Device(name=device, memory=2**40) for _ in range(num_ranks)), stages=stages,
        predicted=Predicted(iteration_s=0.0, bubble_fraction=0.0),
        solver=SolverInfo(method="hand", status="heuristic", objective_s=0.0, lower_bound_s=0.0,
                          gap=0.0, seconds=0.0))


def hand_plan(graph: Graph, num_stages: int, **kwargs: object) -> Plan:
    """A balanced contiguous plan with ``num_stages`` stages."""
    return plan_from_cuts(graph, balanced_cuts(graph, num_stages), **kwargs)  # type: ignore[arg-type]


def remaking(graph: Graph, plan: Plan) -> Plan:
    """``plan`` with each stage making again every remakable value it reads from an earlier
    stage, and the nodes that make it ([Note: values made again]), as ``remake="all"`` plans."""
    stage_of = plan.stage_of
    inputs = {n.name: n.inputs for n in graph.nodes}
    order = {n.name: i for i, n in enumerate(graph.nodes)}
    remakable = {n.name for n in graph.nodes if n.remakable}
    stages = []
    for stage in plan.stages:
        todo = [v for n in stage.nodes for v in inputs[n] if v in remakable and stage_of[v] < stage.index]
        made: set[str] = set()
        while todo:
            v = todo.pop()
            if v not in made:
                made.add(v)
                todo.extend(inputs[v])
        stages.append(dataclasses.replace(stage, remade=tuple(sorted(made, key=order.__getitem__))))
    return dataclasses.replace(plan, stages=tuple(stages))
