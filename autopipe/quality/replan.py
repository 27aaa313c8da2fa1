"""Plan a model again with the options an earlier plan recorded (``autopipe check --spec``)."""

from __future__ import annotations

from autopipe.errors import PlanError
from autopipe.partition.planner import DEFAULT_MAX_BLOCKS
from autopipe.plan_format import Plan
from autopipe.spec import ModelSpec, example_target


def replan(spec: ModelSpec, old: Plan) -> Plan:
    """Re-plan ``spec`` with ``old``'s stages, devices, schedule, method and memory model.

    The profile is made the way ``old``'s was: measured here, or estimated for the same
    device spec (``options.profile_device == "estimate:<spec>"``).

    Raises:
        PlanError: ``old`` lacks the options needed (it was not written by ``autopipe plan``).
    """
    from autopipe.api import plan

    opts = old.options
    if "profile_method" not in opts:
        raise PlanError("the plan records no planner options (profile_method missing)",
                        hint="regenerate the baseline with `autopipe plan`")
    method = str(opts["profile_method"])
    device_spec = "h100"
    if method == "estimate":
        device_spec = str(opts.get("profile_device", "estimate:h100")).removeprefix("estimate:")
    recorded = opts.get("recompute")
    return plan(
        spec.model, spec.example_inputs, example_kwargs=spec.example_kwargs,
        num_stages=old.num_stages, devices=list(old.devices), microbatches=old.microbatches,
        batch_size=opts["batch_size"] if isinstance(opts.get("batch_size"), int) else None,
        schedule=old.schedule, profile=method, optimizer=str(opts.get("optimizer", "adam")),
        method=old.solver.method, device_spec=device_spec,
        dtype=str(opts["dtype"]) if opts.get("dtype") else None,
        # a plan records None for infinitely fast links (free sends)
        link_bandwidth=opts.get("link_bandwidth") or float("inf"),
        max_blocks=int(opts.get("max_blocks", DEFAULT_MAX_BLOCKS)),
        time_limit=float(opts.get("time_limit", 60.0)),
        mip_gap=float(opts.get("mip_gap", 1e-3)), solver=str(opts.get("solver", "highs")),
        loss_fn=spec.loss_fn, target=example_target(spec),
        # a plan records its recomputation only where it recomputes (else: auto's choice)
        recompute=str(recorded.get("mode", "auto")) if isinstance(recorded, dict) else "auto")
