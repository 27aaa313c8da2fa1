"""Tests for autopipe/partition/infeasible.py: what overflows and what would fit."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from autopipe._units import parse_size
from autopipe.errors import InfeasiblePlanError
from autopipe.partition import infeasible, plan_profile
from autopipe.partition.costs import usable
from autopipe.partition.problem import Problem
from autopipe.partition.synthetic import synthetic_profile
from autopipe.plan_format import Device


def remedies(err: InfeasiblePlanError) -> list[str]:
    """The remedies a hint names: ``try A; or B; or C``."""
    hint = err.hint or ""
    assert hint.startswith("try "), hint
    return hint[len("try "):].split("; or ")


def remedy(err: InfeasiblePlanError, pattern: str) -> re.Match[str] | None:
    """The first remedy that starts with ``pattern`` (a regex), matched."""
    return next((m for r in remedies(err) if (m := re.match(pattern, r))), None)


def test_names_the_overflow_and_a_stage_count_that_fits() -> None:
    prof = synthetic_profile(80, seed=2)
    fits = plan_profile(prof, num_stages=8, microbatches=16)
    limit = int(max(s.memory.total for s in fits.stages) * 1.05)
    with pytest.raises(InfeasiblePlanError) as info:
        plan_profile(prof, num_stages=2, microbatches=16, memory_limit=limit)
    err = info.value
    assert re.search(r"stage \d needs [\d.]+ [KMG]iB but cuda:\d has [\d.]+ [KMG]iB", err.message)
    assert "the most memory-balanced split needs [" in err.message
    m = re.search(r"--stages (\d+)", err.hint or "")
    assert m is not None
    plan_profile(prof, num_stages=int(m.group(1)), microbatches=16, memory_limit=limit)


def test_gpipe_suggests_fewer_microbatches() -> None:
    prof = synthetic_profile(40, seed=2)
    with pytest.raises(InfeasiblePlanError) as info:
        plan_profile(prof, num_stages=2, microbatches=16, schedule="gpipe", memory_limit="800MiB",
                     recompute="none")
    m = remedy(info.value, r"--microbatches (\d+)$")
    assert m is not None
    plan_profile(prof, num_stages=2, microbatches=int(m.group(1)), schedule="gpipe",
                 memory_limit="800MiB", recompute="none")
    # recomputation fits too, and the hint says so: the default (auto) plan is the one it names
    assert "--recompute auto" in (info.value.hint or "")
    auto = plan_profile(prof, num_stages=2, microbatches=16, schedule="gpipe", memory_limit="800MiB")
    assert auto.recomputes and all(s.memory.total <= 800 << 20 for s in auto.stages)


def test_the_stage_count_named_is_the_smallest_that_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hint names the fewest stages found to fit; counts whose parameters, gradients and
    optimizer states alone exceed the devices' limits are not searched."""
    prof = synthetic_profile(80, seed=2)
    plan = plan_profile(prof, num_stages=2, microbatches=16)
    states = sum(s.memory.params + s.memory.grads + s.memory.optimizer for s in plan.stages)
    limit = int(states / usable(3.5))  # usable: states / 3.5, so 3 stages cannot hold them
    searched: list[Problem] = []
    real = infeasible._found

    def counted(problem: Problem, method: str) -> bool:
        searched.append(problem)
        return real(problem, method)
    monkeypatch.setattr(infeasible, "_found", counted)
    with pytest.raises(InfeasiblePlanError) as info:
        plan_profile(prof, num_stages=2, microbatches=16, memory_limit=limit, recompute="none")
    m = remedy(info.value, r"--stages (\d+)$")
    assert m is not None
    named = int(m.group(1))
    problem = searched[0]
    assert sum(pm.total for pm in problem.param_mem.values()) == states
    below = [p for p in range(3, named) if states > p * usable(limit)]
    counts = {q.config.num_stages for q in searched}
    assert below == [3] and 3 not in counts  # never searched
    for p in range(3, named):  # and no smaller count fits
        devices = tuple(Device(name="d", memory=limit) for _ in range(p))
        assert not real(problem.with_config(replace(problem.config, num_stages=p, devices=devices)), "ilp")


@pytest.mark.parametrize("method", ["ilp", "dp"])
def test_the_needs_named_recompute_as_the_message_says(method: str) -> None:
    """Where nothing fits even recomputing, the split named is priced recomputing what the
    chain's split recomputes: no stage needs more than the fullest stage of a split that
    recomputes every block (a Gemma-2-27B shape in 8 stages was said to need 338 GiB a
    stage "recomputing every block that can be", priced without recomputation, where
    recomputing every block needs 100 GiB)."""
    prof = synthetic_profile(40, seed=2)
    full = plan_profile(prof, num_stages=2, microbatches=16, schedule="gpipe", recompute="full",
                        method="dp")
    bare = plan_profile(prof, num_stages=2, microbatches=16, schedule="gpipe", recompute="none",
                        method="dp")
    most = max(s.memory.total for s in full.stages)
    assert most < 0.5 * max(s.memory.total for s in bare.stages)  # recomputation matters here
    states = max(s.memory.params + s.memory.grads + s.memory.optimizer for s in full.stages)
    with pytest.raises(InfeasiblePlanError) as info:
        plan_profile(prof, num_stages=2, microbatches=16, schedule="gpipe", method=method,
                     memory_limit=states // 2)
    m = re.search(r"split needs \[([^\]]*)\]", info.value.message)
    assert m is not None and "recomputing every block that can be" in info.value.message
    needs = [parse_size(x.replace(" ", "")) for x in m.group(1).split(", ")]
    assert max(needs) <= most * 1.02
