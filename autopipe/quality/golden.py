"""The golden file of partition quality: re-plan stored profiles, fail on regressions.

A golden file (``"schema": "autopipe.golden/1"``) lists cases, each a stored profile
with planning options and the results recorded when the file was last refreshed::

    {"schema": "autopipe.golden/1", "tolerance": 0.01, "cases": [
      {"profile": "cpu/gpt2.json", "stages": 4, "memory": "64MiB", "microbatches": 8,
       "schedule": "1f1b", "optimizer": "adam",
       "iteration_s": 0.61, "lower_bound_s": 0.60, "gap": 0.0, "solve_s": 0.4,
       "uniform_s": 0.83, "params_s": 0.97}]}

Profile paths are relative to the golden file. A case regresses when its re-planned
iteration time exceeds the recorded one by more than the tolerance, or when its solve
time exceeds ``max(SOLVE_FACTOR × recorded, SOLVE_FLOOR_S)``.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from autopipe._jsonio import read_json, write_json_atomic
from autopipe._units import format_seconds, parse_size
from autopipe.errors import AutopipeError, PlanError
from autopipe.plan_format import Plan
from autopipe.profile.profile import Profile

SCHEMA = "autopipe.golden/1"
SOLVE_FACTOR = 10.0
SOLVE_FLOOR_S = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class GoldenCase:
    """One profile × stage count × memory limit, and what the planner gave for it."""

    profile: str
    """Profile path, relative to the golden file."""
    stages: int
    memory: str | None
    """Memory limit per stage (``"80GiB"``); None = unlimited."""
    microbatches: int
    schedule: str = "1f1b"
    optimizer: str = "adam"
    iteration_s: float = 0.0
    """Recorded predicted iteration time of the ILP plan."""
    lower_bound_s: float = 0.0
    gap: float = 0.0
    solve_s: float = 0.0
    uniform_s: float | None = None
    """The uniform-layer baseline's iteration time (None: it does not fit)."""
    params_s: float | None = None
    """The parameter-balanced baseline's iteration time (None: it does not fit)."""
    recompute: str = "none"
    """Activation recomputation to plan with (``autopipe plan --recompute``); written only
    when not ``none``, the mode of the cases recorded before it existed."""

    @property
    def label(self) -> str:
        """Short name for reports."""
        return (f"{self.profile} p={self.stages} mem={self.memory or 'inf'} m={self.microbatches}"
                + ("" if self.recompute == "none" else f" recompute={self.recompute}"))


@dataclass(frozen=True, slots=True, kw_only=True)
class CaseResult:
    """A case re-planned now, beside its recorded values."""

    case: GoldenCase
    """As recorded."""
    now: GoldenCase
    """The same case with today's results."""
    failures: tuple[str, ...]


def load_golden(path: str | os.PathLike[str]) -> tuple[float, list[GoldenCase]]:
    """(tolerance, cases) of a golden file.

    Raises:
        PlanError: missing, corrupt or malformed file.
    """
    data = read_json(path, SCHEMA, PlanError)
    try:
        cases = [GoldenCase(**c) for c in data["cases"]]
    except (KeyError, TypeError) as e:
        raise PlanError(f"{path}: malformed golden file ({e})",
                        hint="regenerate it with --refresh") from None
    for i, case in enumerate(cases):
        try:
            if case.memory is not None:
                parse_size(case.memory)
        except AutopipeError as e:
            raise PlanError(f"{path}: case {i} ({case.label}): memory: {e.message}",
                            hint=e.hint) from None
    tolerance = data.get("tolerance", 0.01)
    # a negative tolerance fails every case (+0.00%), a string fails in float() or compares
    # as text: either is a broken file, not a regression
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance >= 0:
        raise PlanError(f"{path}: tolerance {tolerance!r} is not a non-negative fraction",
                        hint='write e.g. "tolerance": 0.01 for 1%')
    return float(tolerance), cases


def save_golden(path: str | os.PathLike[str], tolerance: float, cases: list[GoldenCase]) -> None:
    """Write a golden file atomically."""
    write_json_atomic(path, {"schema": SCHEMA, "tolerance": tolerance,
                             "cases": [_case_json(c) for c in cases]})


def _case_json(case: GoldenCase) -> dict[str, object]:
    out = asdict(case)
    if case.recompute == "none":
        del out["recompute"]
    return out


def plan_case(case: GoldenCase, root: Path) -> tuple[Plan, float]:
    """Plan a case from its stored profile; returns (plan, solve seconds).

    Raises:
        AutopipeError: the case's profile or options are bad (of its type, naming the case).
    """
    from autopipe.partition.planner import plan_profile

    try:
        profile = Profile.load(root / case.profile)
        t0 = time.perf_counter()
        plan = plan_profile(profile, num_stages=case.stages, memory_limit=case.memory,
                            microbatches=case.microbatches, schedule=case.schedule,
                            optimizer=case.optimizer, method="ilp", recompute=case.recompute)
    except AutopipeError as e:
        raise type(e)(f"golden case {case.label}: {e.message}", hint=e.hint) from e
    return plan, time.perf_counter() - t0


def _measured(case: GoldenCase, plan: Plan, seconds: float) -> GoldenCase:
    def base(name: str) -> float | None:
        b = plan.baselines.get(name)
        return None if b is None else b.iteration_s

    return replace(case, iteration_s=plan.predicted.iteration_s,
                   lower_bound_s=plan.solver.lower_bound_s, gap=plan.solver.gap,
                   solve_s=round(seconds, 3), uniform_s=base("uniform"), params_s=base("params"))


def run_case(case: GoldenCase, root: Path, tolerance: float) -> CaseResult:
    """Re-plan one case and judge it against its recorded values."""
    plan, seconds = plan_case(case, root)
    now = _measured(case, plan, seconds)
    failures = []
    if now.iteration_s > case.iteration_s * (1 + tolerance):
        failures.append(f"{case.label}: iteration {format_seconds(now.iteration_s)} > recorded "
                        f"{format_seconds(case.iteration_s)} ({now.iteration_s / case.iteration_s - 1:+.2%},"
                        f" tolerance {tolerance:.1%})")
    bound = max(SOLVE_FACTOR * case.solve_s, SOLVE_FLOOR_S)
    if seconds > bound:
        failures.append(f"{case.label}: solve took {seconds:.1f} s, more than the bound {bound:.1f} s")
    return CaseResult(case=case, now=now, failures=tuple(failures))


def check_golden(path: str | os.PathLike[str], *, tolerance: float | None = None) -> list[CaseResult]:
    """Re-plan every case of a golden file (see the module docstring for the rules)."""
    tol, cases = load_golden(path)
    root = Path(path).parent
    return [run_case(c, root, tol if tolerance is None else tolerance) for c in cases]


def refresh_golden(path: str | os.PathLike[str], cases: list[GoldenCase] | None = None) -> list[GoldenCase]:
    """Re-plan every case (or the given ones) and record today's results in the file."""
    tol = 0.01
    if cases is None:
        tol, cases = load_golden(path)
    root = Path(path).parent
    fresh = [_measured(c, *plan_case(c, root)) for c in cases]
    save_golden(path, tol, fresh)
    return fresh


def table(cases: list[GoldenCase]) -> str:
    """The README table: autopipe vs uniform vs parameter-balanced, gap and solve time."""
    def cell(t: float | None, ref: float) -> str:
        return "does not fit" if t is None else f"{format_seconds(t)} ({t / ref:.2f}×)"

    rows = ["| profile | stages | memory/stage | m | autopipe | uniform (× autopipe) | params (× autopipe) | gap | solve |",
            "|---|---|---|---|---|---|---|---|---|"]
    for c in cases:
        memory = (c.memory or "unlimited") + ("" if c.recompute == "none" else f", recompute {c.recompute}")
        rows.append(f"| {c.profile} | {c.stages} | {memory} | {c.microbatches} | "
                    f"{format_seconds(c.iteration_s)} | {cell(c.uniform_s, c.iteration_s)} | "
                    f"{cell(c.params_s, c.iteration_s)} | {c.gap:.2%} | {c.solve_s:.2f} s |")
    return "\n".join(rows)

