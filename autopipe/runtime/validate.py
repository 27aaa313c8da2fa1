"""``validate_plan``: what a plan must satisfy to run, checked by every command that reads one."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from autopipe.errors import PlanError
from autopipe.plan_format import Plan
from autopipe.runtime.placement import check_fingerprint, check_world_size, rank_of_stages
from autopipe.runtime.split import Split, check_remade, split_graph
from autopipe.spec import ModelSpec
from autopipe.trace.graph import Graph

_REGENERATE = "regenerate it with `autopipe plan`"


def validate_plan(plan: Plan, graph: Graph | None = None, *, world_size: int | None = None,
                  constants: Mapping[str, Any] | None = None) -> Split | None:
    """Raise unless ``plan`` can run; ``autopipe train`` checks this before any rank starts.

    Without ``graph``, what the file alone can show (``autopipe show``, ``check
    --baseline``): every stage holds nodes, no node is in two stages, the stages hold as
    many nodes as the planner recorded (``options["nodes"]``), every send goes to a later
    stage from the stage that makes the tensor or a later one, the output node is in
    the last stage, the schedule is known and its stage-to-rank placement fits, and the
    predictions are finite, non-negative and one per stage. With ``graph``, also what
    only the model can show: the plan was made for it and this micro-batch shape (the
    fingerprint), every graph node is in exactly one stage, stages follow the data flow
    (convex), and only tensors cross a cut: the runtime's own split is made, and returned.

    Args:
        plan: the plan.
        graph: the traced model the plan is for, if at hand.
        world_size: the number of ranks that will run it, if known.
        constants: values of the model inputs that are not tensors (see ``split_graph``).

    Returns:
        The runtime's split of ``graph`` into the plan's stages; None without ``graph``.

    Raises:
        PlanError: the plan cannot run (the message names the stage or node).
        PlanMismatchError: it was made for another model, micro-batch shape or world size.
    """
    _check_stages(plan)
    _check_sends(plan)
    check_remade(plan)
    _check_numbers(plan)
    rank_of_stages(plan)  # a known schedule whose placement fits the stages
    if world_size is not None:
        check_world_size(plan, world_size)
    if graph is None:
        return None
    check_fingerprint(plan, graph.fingerprint)
    return split_graph(graph, plan, constants)


def model_constants(graph: Graph, spec: ModelSpec) -> dict[str, Any]:
    """The model inputs of ``spec``'s example that are not tensors, by placeholder name
    (baked into stage 0 rather than sent)."""
    import torch

    flat = graph.flat_inputs(spec.example_inputs, spec.example_kwargs)
    names = [n.name for n in graph.gm.graph.nodes if n.op == "placeholder"]
    return {n: v for n, v in zip(names, flat) if not isinstance(v, torch.Tensor)}


def _check_stages(plan: Plan) -> None:
    for s in plan.stages:
        if not s.nodes:
            raise PlanError(f"stage {s.index} has no nodes", hint=_REGENERATE)
    recorded = plan.options.get("nodes")
    held = sum(len(s.nodes) for s in plan.stages)
    if isinstance(recorded, int) and held != recorded:
        raise PlanError(f"the stages hold {held} nodes but the model has {recorded}",
                        hint=f"every node must be in exactly one stage; {_REGENERATE}")
    last = plan.num_stages - 1
    where = plan.stage_of.get("output")
    if where is not None and where != last:
        raise PlanError(f"the model's output node is in stage {where}, not in the last stage {last}",
                        hint=_REGENERATE)


def _check_sends(plan: Plan) -> None:
    stage_of = plan.stage_of
    for s in plan.stages:
        for send in s.sends:
            if not s.index < send.to_stage < plan.num_stages:
                raise PlanError(f"stage {s.index} sends {send.tensor!r} to stage {send.to_stage}",
                                hint=f"stages send only to later stages; {_REGENERATE}")
            made = stage_of.get(send.tensor)
            if made is None:
                raise PlanError(f"stage {s.index} sends {send.tensor!r}, which no stage makes",
                                hint=_REGENERATE)
            if made > s.index:
                raise PlanError(f"stage {s.index} sends {send.tensor!r}, which the later stage "
                                f"{made} makes", hint=f"stages must follow the data flow; {_REGENERATE}")
            if send.bytes < 0:
                raise PlanError(f"stage {s.index} sends {send.tensor!r} of {send.bytes} bytes",
                                hint=_REGENERATE)


def _check_numbers(plan: Plan) -> None:
    for s in plan.stages:
        values = {"forward_s": s.forward_s, "backward_s": s.backward_s, "comm_s": s.comm_s,
                  "memory.total": s.memory.total}
        for name, value in values.items():
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise PlanError(f"stage {s.index} has {name} = {value!r}",
                                hint=f"times and sizes are finite and non-negative; {_REGENERATE}")
    t = plan.predicted.iteration_s
    if not (isinstance(t, int | float) and math.isfinite(t) and t >= 0):
        raise PlanError(f"predicted iteration_s = {t!r}", hint=_REGENERATE)
    peaks = plan.predicted.peak_memory
    if peaks and len(peaks) != plan.num_stages:
        raise PlanError(f"predicted peak_memory has {len(peaks)} entries for {plan.num_stages} stages",
                        hint=_REGENERATE)
