"""A plan's stages as simulator costs, with the runtime's and the model's extras added where known."""

from __future__ import annotations

from autopipe.errors import PlanError
from autopipe.plan_format import Plan, Stage
from autopipe.schedule.runtime_costs import ModelCosts, RuntimeCosts
from autopipe.schedule.simulate import StageCost
from autopipe.schedule.traffic import Traffic, cut_traffic

_ELEMENT_BYTES = {"float64": 8, "float32": 4, "fp32": 4, "tf32": 4, "float16": 2, "fp16": 2,
                  "bfloat16": 2, "bf16": 2}


def plan_runtime(plan: Plan) -> dict[str, float]:
    """The runtime costs the planner priced ``plan`` with (``options.runtime``; empty if none).

    Such a plan's stage times already hold the per-action work; its sends pay the
    latency and every rank the per-step work on top (as ``plan.predicted`` does).
    """
    rt = plan.options.get("runtime")
    return {str(k): float(v) for k, v in rt.items()} if isinstance(rt, dict) else {}


def boundary_send_s(plan: Plan) -> list[float]:
    """One-way send time of each boundary ``b`` (stage ``b`` → ``b + 1``) from the stages'
    ``comm_s``, for plans that do not record their link's bandwidth.

    A stage's ``comm_s`` covers both directions of both its boundaries, the same bytes each
    way in such plans: ``comm_s[s] = 2 (c[s−1] + c[s])``, so the chain unrolls from stage 0.
    """
    out: list[float] = []
    previous = 0.0
    for s in plan.stages[:-1]:
        previous = max(0.0, s.comm_s / 2 - previous)
        out.append(previous)
    return out


def boundary_bytes(plan: Plan) -> list[int]:
    """Bytes crossing each boundary ``b`` per micro-batch, from the stages' sends.

    A send from stage ``a`` to stage ``t`` crosses boundaries ``a … t−1``.
    """
    return [t.forward_bytes for t in traffic(plan)]


def traffic(plan: Plan) -> list[Traffic]:
    """Per boundary, what a micro-batch sends over it each way, from the stages' sends
    ([Note: what a cut sends] in ``autopipe.schedule.traffic``)."""
    crossing: list[list[tuple[int, bool, bool]]] = [[] for _ in range(plan.num_stages - 1)]
    for stage in plan.stages:
        for send in stage.sends:
            for b in range(stage.index, min(send.to_stage, plan.num_stages - 1)):
                crossing[b].append((send.bytes, send.forward_only, not send.no_grad))
    return [cut_traffic(values) for values in crossing]


def link_times(plan: Plan, runtime: RuntimeCosts | None = None) -> tuple[list[float], list[float]]:
    """Per boundary, the seconds of a micro-batch's values forward and of their gradients
    back, each message paying the send latency: ``runtime``'s latency and bandwidth where
    given (the plan's bandwidth where it has none), else those the plan was priced with."""
    cuts = traffic(plan)
    latency = runtime.send_latency_s if runtime is not None else plan_runtime(plan).get("send_latency_s", 0.0)
    if runtime is not None and runtime.link_bandwidth > 0:
        per_byte = 1.0 / runtime.link_bandwidth
    elif "link_bandwidth" in plan.options:
        bandwidth = plan.options["link_bandwidth"]
        per_byte = 0.0 if bandwidth is None else 1.0 / float(bandwidth)
    else:  # a plan written before it recorded its bandwidth: the same bytes both ways
        sends = [latency + c for c in boundary_send_s(plan)]
        return sends, sends
    return ([latency * t.forward_messages + per_byte * t.forward_bytes for t in cuts],
            [latency * t.back_messages + per_byte * t.back_bytes for t in cuts])


def _step_s(plan: Plan, runtime: RuntimeCosts | None, model: ModelCosts | None) -> tuple[float, ...]:
    """Per stage, the optimizer step alone: measured for the model, else the runtime's estimate."""
    n = plan.num_stages
    if model is not None and model.stage_optimizer_s:
        return model.stage_optimizer_s
    if runtime is None or not (runtime.optimizer_tensor_s or runtime.optimizer_element_s):
        # the plan's own figure, from the profile's optimizer rates
        return tuple(s.optimizer_s for s in plan.stages)
    if model is not None and model.stage_param_elements:
        tensors = model.stage_param_tensors or (0,) * n
        elements = model.stage_param_elements
    else:  # only the plan's parameter bytes: the per-element part of the cost
        size = _ELEMENT_BYTES.get(str(plan.options.get("dtype", "float32")), 4)
        tensors, elements = (0,) * n, tuple(s.memory.params // size for s in plan.stages)
    return tuple(runtime.optimizer_s(t, e) for t, e in zip(tensors, elements))


def _optimizer_s(plan: Plan, runtime: RuntimeCosts | None, model: ModelCosts | None) -> list[float]:
    """Per stage, what runs once per step after its last backward: tied all-reduce and
    optimizer, and on each rank's first stage the runtime's per-step work.

    The per-step work (splitting the batch, clearing state) really runs before the
    rank's first action; every rank pays the same, so counting it at the end instead
    moves the whole step by the same amount and leaves its time unchanged.
    """
    n = plan.num_stages
    tied = model.stage_tied_bytes if model is not None and model.stage_tied_bytes else (0,) * n
    rows = model.stage_tied_rows_bytes if model is not None and model.stage_tied_rows_bytes else (0,) * n
    ranks_seen: set[int] = set()
    out = []
    for s, step in enumerate(_step_s(plan, runtime, model)):
        # the tied gradients' sum between two holders, as the runtime runs it
        reduce = (runtime.tied_sum_s(tied[s] - rows[s]) + runtime.tied_sum_s(rows[s], rows=True)
                  if runtime is not None else 0.0)
        rank = plan.stages[s].rank
        rank = s if rank is None else rank
        if runtime is not None:
            once = runtime.step_overhead_s
        else:  # the plan's own: its per-step work and the tied-gradient sync it was priced with
            tied_sync = plan.options.get("tied_sync_s", 0.0) if model is None else 0.0
            once = plan_runtime(plan).get("step_overhead_s", 0.0) + float(tied_sync or 0.0)
        per_step = once if rank not in ranks_seen else 0.0
        ranks_seen.add(rank)
        out.append(step + reduce + per_step)
    return out


def _compute(stage: Stage, model: ModelCosts | None) -> tuple[float, float, float]:
    """(forward, backward, its weight part) of one stage: re-timed, scaled, or as planned."""
    share = stage.backward_weight_s / stage.backward_s if stage.backward_s > 0 else 0.0
    if model is not None and model.stage_forward_s and model.stage_backward_s:
        backward = model.stage_backward_s[stage.index]
        return model.stage_forward_s[stage.index], backward, share * backward
    k = model.compute_scale if model is not None else 1.0
    return k * stage.forward_s, k * stage.backward_s, k * stage.backward_weight_s


def plan_costs(plan: Plan, *, runtime: RuntimeCosts | None = None,
               model: ModelCosts | None = None) -> tuple[list[StageCost], int]:
    """Per-stage simulator costs of a plan, and its virtual stages per rank.

    Without ``runtime`` and ``model`` these are the plan's own figures. With
    ``runtime``: forward and backward actions pay its per-action overheads,
    sends its latency (and its bandwidth over the plan's boundary bytes when
    it has one), and each stage an optimizer step. With ``model``: stage times
    are its re-timed stage modules (else scaled by its ``compute_scale``), the
    last stage also runs the loss, and the optimizer step is the one measured on
    the stage's parameters (else the runtime's estimate for the stage's real
    parameter tensors). Activation bytes are left at zero (see ``simulate_plan``).

    Raises:
        PlanError: a stage's weight-gradient time exceeds its backward time,
            its ranks do not spread the stages evenly, or ``model`` has
            another number of stages.
    """
    n = plan.num_stages
    ranks = {s.rank if s.rank is not None else s.index for s in plan.stages}
    if n % len(ranks):
        raise PlanError(f"{n} stages on {len(ranks)} ranks are not the same number per rank",
                        hint="regenerate the plan")
    counts = {len(t) for t in (model.stage_param_elements, model.stage_forward_s,
                                model.stage_optimizer_s) if t} if model is not None else set()
    if counts - {n}:
        raise PlanError(f"model costs are for {max(counts - {n})} stages, the plan has {n}",
                        hint="measure the model costs for this plan")
    sends, returns = link_times(plan, runtime)
    # a rank hands a tensor to its own next stage in memory (V-shaped placements): no send
    on = [s.rank if s.rank is not None else s.index for s in plan.stages]
    sends = [0.0 if on[b] == on[b + 1] else c for b, c in enumerate(sends)]
    returns = [0.0 if on[b] == on[b + 1] else c for b, c in enumerate(returns)]
    sends.append(0.0)
    returns.append(0.0)
    optimizer = _optimizer_s(plan, runtime, model)
    fo = runtime.forward_overhead_s if runtime is not None else 0.0
    bo = runtime.backward_overhead_s if runtime is not None else 0.0
    costs = []
    for s in plan.stages:
        if s.backward_weight_s > s.backward_s + 1e-12:
            raise PlanError(f"stage {s.index}: backward_weight_s {s.backward_weight_s} exceeds "
                            f"backward_s {s.backward_s}", hint="regenerate the plan")
        forward, backward, weight = _compute(s, model)
        last = model is not None and s.index == n - 1
        costs.append(StageCost(
            forward_s=forward + fo + (model.loss_forward_s if last and model else 0.0),
            backward_input_s=backward - weight + bo + (model.loss_backward_s if last and model else 0.0),
            backward_weight_s=weight, send_s=sends[s.index], return_s=returns[s.index],
            optimizer_s=optimizer[s.index]))
    return costs, n // len(ranks)
