"""Tests for autopipe/runtime/timing_together.py: every rank's stages timed at once, a process per rank."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import autopipe
from autopipe.errors import ProfileError
from autopipe.partition.planner import plan_profile
from autopipe.profile import measure
from autopipe.refine import refine
from autopipe.runtime import timing_together
from autopipe.runtime.timing_together import time_together, together_reason

from .conftest import example_spec


class _Logged(nn.Module):
    """A linear layer that logs which process ran each forward, and when."""

    def __init__(self, log: Path, fail: bool = False) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 64)
        self.log, self.fail = log, fail

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        if self.fail:
            raise RuntimeError("this stage cannot run")
        start = time.monotonic()
        y = x
        for _ in range(20):
            y = torch.tanh(self.linear(y))
        with self.log.open("a") as f:
            f.write(f"{os.getpid()} {start} {time.monotonic()}\n")
        return (y,)


def _runs(log: Path) -> dict[int, list[tuple[float, float]]]:
    out: dict[int, list[tuple[float, float]]] = {}
    for line in log.read_text().splitlines():
        pid, a, b = line.split()
        out.setdefault(int(pid), []).append((float(a), float(b)))
    return out


def test_each_rank_runs_in_its_own_process_alongside_the_others(tmp_path: Path) -> None:
    logs = [tmp_path / f"{i}.log" for i in range(3)]
    modules = [_Logged(log) for log in logs]
    x = torch.randn(32, 64)
    f, b, _ = time_together(modules, [[x], [x], [x]], ranks=[0, 1, 0], repeats=5, warmup=2, idle_s=0.0)
    assert len(f) == len(b) == 3 and all(t > 0 for t in (*f, *b))
    pids = [set(_runs(log)) for log in logs]
    assert all(len(p) == 1 for p in pids)
    assert pids[0] == pids[2] != pids[1]  # stages 0 and 2 share rank 0's process
    assert os.getpid() not in pids[0] | pids[1]
    # rank 1 kept running while rank 0 was timed: some of its forwards overlap rank 0's
    zero, one = _runs(logs[0])[next(iter(pids[0]))], _runs(logs[1])[next(iter(pids[1]))]
    assert any(a < d and c < b for a, b in zero for c, d in one)


def test_a_failing_rank_is_a_clear_error(tmp_path: Path) -> None:
    modules = [_Logged(tmp_path / "0.log"), _Logged(tmp_path / "1.log", fail=True)]
    x = torch.randn(4, 64)
    with pytest.raises(ProfileError, match="rank 1: RuntimeError: this stage cannot run"):
        time_together(modules, [[x], [x]], ranks=None, repeats=2, warmup=1, idle_s=0.0)


def test_only_cpu_stages_are_timed_together(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timing_together, "_accelerator_present", lambda: False)
    assert together_reason([torch.zeros(1)]) is None
    assert "meta" in str(together_reason([torch.zeros(1, device="meta")]))
    # with a GPU, any backward starts autograd's device threads, and a forked child's backward raises
    monkeypatch.setattr(timing_together, "_accelerator_present", lambda: True)
    assert "fork" in str(together_reason([torch.zeros(1)]))


@pytest.mark.skipif(timing_together._accelerator_present(), reason="with an accelerator, stages are timed one at a time")
def test_refine_times_the_stages_together_on_the_cpu() -> None:
    spec = example_spec("mlp", layers=4)
    graph = autopipe.trace(spec.model, spec.example_inputs)
    profile = measure(graph, spec.example_inputs, warmup=1, repeats=2, progress=False)

    def solve(p: Any) -> Any:
        return plan_profile(p, num_stages=2, microbatches=4)

    plan = refine(solve(profile), profile, graph, spec.example_inputs, {}, solve, rounds=1, repeats=2)
    assert plan.options["refine"]["timed"] == "together"
    alone = refine(solve(profile), profile, graph, spec.example_inputs, {}, solve, rounds=1, repeats=2,
                   together=False)
    assert alone.options["refine"]["timed"] == "one at a time (not asked)"


def test_refine_times_one_stage_at_a_time_where_a_fork_cannot_run_autograd(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = example_spec("mlp", layers=4)
    graph = autopipe.trace(spec.model, spec.example_inputs)
    profile = measure(graph, spec.example_inputs, warmup=1, repeats=2, progress=False)

    def solve(p: Any) -> Any:
        return plan_profile(p, num_stages=2, microbatches=4)

    monkeypatch.setattr(timing_together, "_accelerator_present", lambda: True)
    plan = refine(solve(profile), profile, graph, spec.example_inputs, {}, solve, rounds=1, repeats=2)
    assert plan.options["refine"]["timed"].startswith("one at a time")
    assert "fork" in plan.options["refine"]["timed"]


def test_the_last_stage_is_timed_with_the_loss() -> None:
    from autopipe.runtime.split import split_graph
    from autopipe.runtime.timing import time_stages

    spec = example_spec("mlp", layers=4)
    graph = autopipe.trace(spec.model, spec.example_inputs)
    profile = measure(graph, spec.example_inputs, warmup=1, repeats=2, progress=False)
    split = split_graph(graph, plan_profile(profile, num_stages=2, microbatches=4))
    seen: list[tuple[int, ...]] = []

    def loss(outs: tuple[Any, ...]) -> torch.Tensor:
        seen.append(tuple(outs[0].shape))
        return outs[0].square().mean()

    times = time_stages(split, list(spec.example_inputs), repeats=3, warmup=1, loss=loss)
    out = spec.model(*spec.example_inputs)
    assert seen == [tuple(out.shape)] * 4  # every run of the last stage, on the model's output
    assert times.loss_s is not None and min(times.loss_s) > 0  # the loss timed apart
    assert time_stages(split, list(spec.example_inputs), repeats=1, warmup=0).loss_s is None
    together = time_stages(split, list(spec.example_inputs), repeats=2, warmup=1, loss=loss, together=True)
    assert together.loss_s is not None and len(together.forward_s) == 2


def test_timed_runs_spread_over_the_window() -> None:
    """At least ``repeats`` runs; more while under ``min_s``; never over MORE_RUNS × repeats."""
    import time

    from autopipe.runtime.timing import MORE_RUNS, timed_runs

    assert len(timed_runs(lambda: 1, 3)) == 3
    assert len(timed_runs(lambda: 1, 3, min_s=60.0)) == MORE_RUNS * 3  # capped, not a minute
    start = time.perf_counter()
    runs = timed_runs(lambda: time.sleep(0.01), 2, min_s=0.1)
    assert 2 < len(runs) <= MORE_RUNS * 2 and time.perf_counter() - start >= 0.1
