"""Compare a new plan with a baseline plan: is it slower or closer to running out of memory?"""

from __future__ import annotations

from dataclasses import dataclass, field

from autopipe._units import format_seconds, format_size
from autopipe.errors import PlanMismatchError
from autopipe.plan_format import Plan


@dataclass(frozen=True, slots=True, kw_only=True)
class Comparison:
    """The verdict of ``compare_plans`` and the readable diff behind it."""

    worse: bool
    """True when the new plan regresses beyond the tolerance."""
    reasons: tuple[str, ...]
    """One line per regression found (empty when not worse)."""
    lines: tuple[str, ...] = field(default=())
    """The human-readable diff: summary, per-stage table, moved nodes."""

    def report(self) -> str:
        """The whole diff as text."""
        return "\n".join(self.lines)


def device_peaks(plan: Plan) -> dict[str, tuple[int, tuple[int, ...]]]:
    """Per device: its predicted peak bytes and the stages it holds.

    A device of one stage peaks at that stage's ``memory.total``. A device of several
    (the chunks of an interleaved or V-shaped schedule) holds them all at once: its peak
    is the sum of their ``predicted.peak_memory``, which the planner splits so that a
    rank's chunks add up to its peak (``autopipe.partition.planner.predict``); each chunk's
    ``memory.total`` alone would miss the others it holds.
    """
    held: dict[str, list[int]] = {}
    for st in plan.stages:
        held.setdefault(st.device, []).append(st.index)
    peaks = plan.predicted.peak_memory
    out = {}
    for device, stages in held.items():
        if len(stages) > 1 and len(peaks) == plan.num_stages:
            out[device] = (sum(peaks[i] for i in stages), tuple(stages))
        else:
            out[device] = (max(plan.stages[i].memory.total for i in stages), tuple(stages))
    return out


def _peak(peaks: dict[str, tuple[int, tuple[int, ...]]]) -> tuple[int, str]:
    """The largest of ``device_peaks``, and what it is: a stage, or a rank of several."""
    several = any(len(stages) > 1 for _, stages in peaks.values())
    return max(peak for peak, _ in peaks.values()), "largest rank" if several else "largest stage"


def compare_plans(new: Plan, old: Plan, *, tolerance: float = 0.01, same_model: bool = False) -> Comparison:
    """Compare ``new`` against ``old`` (the baseline).

    The new plan is worse when its predicted iteration time exceeds the old one by more
    than ``tolerance`` (relative), when its largest stage needs more than ``tolerance``
    more memory, or when a stage no longer fits its device. Where the plans train
    different batches (micro-batches × data-parallel replicas; the micro-batches are of
    one size, as the fingerprints match), the times are compared per sample: a step of
    more samples may take longer ([Note: plans of different batches]).

    With ``same_model`` (the caller checked both are of one model, as ``check --spec``
    does), plans whose micro-batches differ in size (a search re-run chose another: [Note:
    re-planning a search] in ``autopipe.quality.replan``) are compared per sample, each
    plan's samples per step counted from its recorded micro-batch size.

    Raises:
        PlanMismatchError: the plans are for different models or micro-batch shapes.
    """
    resized = (same_model and new.graph_fingerprint != old.graph_fingerprint
               and _step_samples(new) is not None and _step_samples(old) is not None)
    if new.graph_fingerprint != old.graph_fingerprint and not resized:
        raise PlanMismatchError(
            f"the plans are for different models (fingerprint {new.graph_fingerprint[:12]} vs "
            f"{old.graph_fingerprint[:12]})",
            hint="compare plans of the same model and micro-batch shape, or refresh the baseline")
    if tolerance < 0:
        raise PlanMismatchError(f"tolerance {tolerance} is negative", hint="use e.g. 0.01 for 1%")
    reasons: list[str] = []
    t_new, t_old = new.predicted.iteration_s, old.predicted.iteration_s
    b_new, b_old = _batch(new), _batch(old)
    if resized:  # micro-batches of other sizes: count samples, not micro-batches
        b_new, b_old = _step_samples(new) or b_new, _step_samples(old) or b_old
    if b_new == b_old and t_new > t_old * (1 + tolerance):
        reasons.append(f"predicted iteration time {format_seconds(t_new)} is {t_new / t_old - 1:+.1%} "
                       f"against the baseline {format_seconds(t_old)} (tolerance {tolerance:.1%})")
    s_new, s_old = t_new / b_new, t_old / b_old  # per micro-batch, of one size: per sample
    per_sample = []
    if resized:
        per_sample = [f"micro-batch     {_size(old):>12} -> {_size(new):>12}  (samples; the "
                      f"search chose another size: compared per step of {_samples(new)})"]
    if b_new != b_old:
        trains = f"a step trains {_samples(new)}, the baseline's {_samples(old)}"
        per_sample = [f"per micro-batch {format_seconds(s_old):>12} -> {format_seconds(s_new):>12}  "
                      f"({s_new / s_old - 1:+.1%}; {trains}: compared per sample)"]
        if s_new > s_old * (1 + tolerance):
            reasons.append(f"predicted time per sample is {s_new / s_old - 1:+.1%} against the "
                           f"baseline's ({format_seconds(s_new)} against {format_seconds(s_old)} a "
                           f"micro-batch; {trains}; tolerance {tolerance:.1%})")
    held = device_peaks(new)
    (m_new, what_new), (m_old, what_old) = _peak(held), _peak(device_peaks(old))
    largest = what_new if what_new == what_old else "largest stage or rank"
    if m_new > m_old * (1 + tolerance):
        reasons.append(f"{largest} needs {format_size(m_new)}, {m_new / m_old - 1:+.1%} against "
                       f"the baseline's {format_size(m_old)} (tolerance {tolerance:.1%})")
    limits = {d.name: d.memory for d in new.devices}
    for device, (peak, stages) in held.items():
        limit = limits.get(device)
        if limit and peak > limit:
            holder = (f"stage {stages[0]}" if len(stages) == 1 else
                      f"the rank of stages {', '.join(map(str, stages))}")
            reasons.append(f"{holder} needs {format_size(peak)} but {device} has {format_size(limit)}")
    lines = [
        f"iteration time  {format_seconds(t_old):>12} -> {format_seconds(t_new):>12}  ({t_new / t_old - 1:+.1%})",
        *per_sample,
        f"{largest + ' ':<16}{format_size(m_old):>12} -> {format_size(m_new):>12}  ({m_new / m_old - 1:+.1%})",
        f"stages          {old.num_stages:>12} -> {new.num_stages:>12}",
        "",
        f"{'stage':>5}  {'time old':>12}  {'time new':>12}  {'memory old':>12}  {'memory new':>12}  nodes old->new",
    ]
    for i in range(max(old.num_stages, new.num_stages)):
        o = old.stages[i] if i < old.num_stages else None
        n = new.stages[i] if i < new.num_stages else None
        lines.append(
            f"{i:>5}  {format_seconds(o.time_s) if o else '-':>12}  {format_seconds(n.time_s) if n else '-':>12}  "
            f"{format_size(o.memory.total) if o else '-':>12}  {format_size(n.memory.total) if n else '-':>12}  "
            f"{len(o.nodes) if o else 0}->{len(n.nodes) if n else 0}")
    moved = _moved(new, old)
    if moved:
        lines += ["", f"{len(moved)} node(s) moved:"]
        lines += [f"  {name}: stage {a} -> {b}" for name, a, b in moved[:20]]
        if len(moved) > 20:
            lines.append(f"  ... and {len(moved) - 20} more")
    same_costs = new.options.get("profile_sha256") is not None and (
        new.options.get("profile_sha256") == old.options.get("profile_sha256"))
    if "measure" in (new.options.get("profile_method"), old.options.get("profile_method")) and not same_costs:
        lines += ["", "note: a plan measured on a machine predicts with that machine's timings, which "
                  "vary from run to run" + ("; the cuts are the same, so the difference is that "
                  "variation" if _same_choice(new, old) else "") + ". For a gate, plan with "
                  "--device-spec: an estimated plan is the same for the same model and options"]
    verdict = "WORSE: " + "; ".join(reasons) if reasons else "OK: not worse than the baseline"
    return Comparison(worse=bool(reasons), reasons=tuple(reasons), lines=(verdict, "", *lines))


# [Note: plans of different batches]
#
# A plan's step trains micro-batches × replicas micro-batches, and plans of one fingerprint
# have micro-batches of one shape. `autopipe plan` takes 2 × stages micro-batches unless
# told: a 2-stage plan (4 micro-batches) against a 3-stage one (6) read 7% faster a step
# and was OK until 2026-12-07, though each sample took 39% longer. Comparing per sample is
# what a gate over such plans asks (is training slower?); the largest stage's memory is
# compared as it is, since a device holds it whatever the batch.


def _batch(plan: Plan) -> int:
    """Micro-batches a step trains, over all data-parallel replicas."""
    return plan.microbatches * plan.replicas


def _step_samples(plan: Plan) -> int | None:
    """Samples a step trains over all replicas, where the plan records its micro-batch size."""
    size = plan.options.get("microbatch_size")
    if not isinstance(size, int) or isinstance(size, bool):
        return None
    return _batch(plan) * size


def _size(plan: Plan) -> str:
    return str(plan.options.get("microbatch_size", "?"))


def _samples(plan: Plan) -> str:
    """What a step trains, in samples where the plan records its micro-batch size."""
    size = plan.options.get("microbatch_size")
    if plan.data_parallel is not None:
        return f"{plan.data_parallel.batch_size} samples ({_batch(plan)} micro-batches)"
    if isinstance(size, int) and not isinstance(size, bool):
        return f"{_batch(plan) * size} samples ({_batch(plan)} micro-batches)"
    return f"{_batch(plan)} micro-batches"


def _same_choice(new: Plan, old: Plan) -> bool:
    """Whether both plans run the same stages the same way (schedule, micro-batches, what
    each stage recomputes and makes again), whatever their times."""
    def choice(p: Plan) -> tuple[object, ...]:
        return (p.schedule, p.microbatches, p.num_stages,
                tuple((s.nodes, s.recompute, s.remade) for s in p.stages))
    return choice(new) == choice(old)


def _moved(new: Plan, old: Plan) -> list[tuple[str, int, int]]:
    before, after = old.stage_of, new.stage_of
    order = [n for s in new.stages for n in s.nodes]
    return [(n, before[n], after[n]) for n in order if n in before and before[n] != after[n]]
