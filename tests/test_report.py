"""Tests for autopipe/report.py: the per-stage table."""

from __future__ import annotations

import pytest

from autopipe._units import format_seconds, format_size
from autopipe.partition import plan_profile
from autopipe.partition.synthetic import synthetic_profile
from autopipe.report import format_plan


def test_table_has_a_row_per_stage_and_the_headline() -> None:
    plan = plan_profile(synthetic_profile(60, seed=1), num_stages=3, memory_limit="4GiB")
    text = format_plan(plan)
    lines = text.splitlines()
    assert lines[0] == "3 stages, 1f1b, 6 micro-batches"
    assert "solver ilp: optimal" in text and "baselines: dp" in text
    header = next(i for i, line in enumerate(lines) if line.startswith("stage"))
    for s in plan.stages:
        row = lines[header + 1 + 3 * s.index]
        assert row.split()[0] == str(s.index) and s.device in row and "4.00 GiB" in row
        assert lines[header + 2 + 3 * s.index].strip().startswith("modules:")
        assert lines[header + 3 + 3 * s.index].strip().startswith("sends:")
    assert lines[header + 3 * plan.num_stages].strip() == "sends:   -"
    assert lines[-plan.num_stages - 1].split() == ["per", "step", "compute", "loss", "runtime", "optimizer",
                                                   "sync", "idle", "step"]


def test_headline_says_what_the_step_counts() -> None:
    import dataclasses

    from autopipe.report import breakdown_lines

    plan = plan_profile(synthetic_profile(60, seed=1), num_stages=3, memory_limit="4GiB")
    assert "compute only" in breakdown_lines(plan)[0]
    stages = tuple(dataclasses.replace(s, optimizer_s=1e-3 * (i + 1)) for i, s in enumerate(plan.stages))
    priced = dataclasses.replace(plan, stages=stages, options={
        **plan.options, "loss": {"forward_s": 1e-3, "backward_s": 2e-3}, "tied_sync_s": 4e-3,
        "runtime": {"forward_overhead_s": 1e-4, "backward_overhead_s": 2e-4, "send_latency_s": 5e-5,
                    "step_overhead_s": 1e-4}})
    line = breakdown_lines(priced)[0]
    assert "loss 3.000 ms per micro-batch" in line and "optimizer step 1.000 ms / 2.000 ms" in line
    assert "tied gradients' sum 4.000 ms per step" in line
    assert "per send" in line and "per step" in line


def test_each_ranks_step_adds_up_from_its_parts() -> None:
    import dataclasses

    from autopipe.report import step_parts

    plan = plan_profile(synthetic_profile(60, seed=1), num_stages=3, memory_limit="4GiB")
    stages = tuple(dataclasses.replace(s, optimizer_s=1e-3 * (i + 1), forward_s=s.forward_s + 1e-4,
                                       backward_s=s.backward_s + 2e-4 + (4e-3 if i == 2 else 0.0))
                   for i, s in enumerate(plan.stages))
    step = plan.predicted.iteration_s + 0.05
    priced = dataclasses.replace(plan, stages=stages, predicted=dataclasses.replace(plan.predicted, iteration_s=step),
                                 options={**plan.options, "loss": {"forward_s": 1e-3, "backward_s": 3e-3},
                                          "tied_sync_s": 2e-3,
                                          "runtime": {"forward_overhead_s": 1e-4, "backward_overhead_s": 2e-4,
                                                      "step_overhead_s": 5e-4}})
    m = plan.microbatches
    parts = step_parts(priced)
    for i, (s, part) in enumerate(zip(plan.stages, parts)):
        assert sum(part.values()) == pytest.approx(step)
        assert part["compute"] == pytest.approx(m * (s.forward_s + s.backward_s))  # less the loss and overheads
        assert part["runtime"] == pytest.approx(m * 3e-4 + 5e-4)
        assert part["optimizer"] == pytest.approx(1e-3 * (i + 1)) and part["sync"] == 2e-3
    assert [p["loss"] for p in parts] == [0.0, 0.0, pytest.approx(m * 4e-3)]


def test_headline_says_which_stages_make_values_again() -> None:
    import dataclasses

    from autopipe.report import remade_lines

    plan = plan_profile(synthetic_profile(60, seed=1), num_stages=3, memory_limit="4GiB")
    assert remade_lines(plan) == [] and "made again" not in format_plan(plan)
    stages = (plan.stages[0], dataclasses.replace(plan.stages[1], remade=plan.stages[0].nodes[1:3]),
              dataclasses.replace(plan.stages[2], remade=plan.stages[0].nodes[1:2]))
    text = format_plan(dataclasses.replace(plan, stages=stages))
    assert "made again, not sent" in text and "nodes 2 in stage 1, 1 in stage 2" in text
    assert "sending every value" not in text
    # --remake auto: the plan it was weighed against, either way
    step = plan.predicted.iteration_s
    remade = dataclasses.replace(plan, stages=stages, options={**plan.options, "remake": {
        "mode": "auto", "sent_s": 1.25 * step}})
    assert remade_lines(remade)[0].endswith(
        f"; sending every value instead, the best plan takes {format_seconds(1.25 * step)} (+25.0%)")
    sent = dataclasses.replace(plan, options={**plan.options, "remake": {"mode": "auto", "remade_s": 1.1 * step}})
    assert remade_lines(sent) == [f"values of no input sent: making them again where faster than a link, "
                                  f"the best plan takes {format_seconds(1.1 * step)} (+10.0%)"]
    assert remade_lines(sent)[0] in format_plan(sent)


def test_the_sends_say_which_go_forward_only() -> None:
    import dataclasses

    plan = plan_profile(synthetic_profile(60, seed=1), num_stages=3, memory_limit="4GiB")
    first = plan.stages[0]
    assert "forward only" not in format_plan(plan)
    sends = (dataclasses.replace(first.sends[0], forward_only=True), *first.sends[1:])
    text = format_plan(dataclasses.replace(plan, stages=(dataclasses.replace(first, sends=sends), *plan.stages[1:])))
    line = next(x for x in text.splitlines() if x.strip().startswith("sends:"))
    assert line.endswith(f"; 1 forward only ({format_size(first.sends[0].bytes)}))")


def test_a_faster_baseline_beside_an_unsettled_refinement_is_said_to_be_unmeasured() -> None:
    """[Note: baselines beside a re-timed step]: a refined plan whose cuts kept moving,
    beside a baseline priced faster, says that baseline was never measured."""
    from dataclasses import replace

    plan = plan_profile(synthetic_profile(60, seed=1), num_stages=3, memory_limit="4GiB")
    slow = replace(plan.baselines["dp"], iteration_s=plan.predicted.iteration_s * 0.8)
    moving = replace(plan, baselines={**plan.baselines, "dp": slow},
                     options={**plan.options, "refine": {"converged": False, "rounds": []}})
    assert "a faster baseline here is not measured" in format_plan(moving)
    settled = replace(moving, options={**plan.options, "refine": {"converged": True, "rounds": []}})
    assert "not measured" not in format_plan(settled)
    assert "not measured" not in format_plan(plan)


@pytest.mark.parametrize("kept", [True, False])
def test_baselines_timed_beside_an_unsettled_refinement_read_measured(kept: bool) -> None:
    """[Note: a faster baseline timed]: the baselines refine timed beside the plan read their
    measured steps, marked so, with a line saying what was timed and which stages were kept;
    the caveat stays only for a faster baseline that was not measured."""
    from dataclasses import replace

    plan = plan_profile(synthetic_profile(60, seed=1), num_stages=3, memory_limit="4GiB")
    step = plan.predicted.iteration_s
    measured = step if kept else 1.1 * step
    against = 1.2 * step if kept else step
    refine = {"converged": False, "rounds": [], "baseline_kept": "dp" if kept else None,
              "baseline_timed": {"dp": {"priced_s": 0.8 * step, "step_s": measured, "steps_s": [measured] * 2},
                                 "params": {"priced_s": 0.9 * step, "step_s": measured, "same_cuts_as": "dp"}},
              "baseline_against": {"step_s": against, "steps_s": [against] * 2}}
    entries = {k: replace(b, iteration_s=measured if k in ("dp", "params") else 2 * step)
               for k, b in plan.baselines.items()}
    done = replace(plan, baselines=entries, options={**plan.options, "refine": refine})
    text = format_plan(done)
    ratio = "+0.0%" if kept else "+10.0%"
    assert f"dp {format_seconds(measured)} ({ratio}, measured)" in text
    assert f"params {format_seconds(measured)} ({ratio}, measured)" in text
    assert "not measured" not in text
    said = (f"with the cuts of its fastest round ({format_seconds(against)}): dp {format_seconds(measured)} "
            f"(priced {format_seconds(0.8 * step)}), params dp's cuts; these stages are ")
    assert said in text
    assert ("these stages are the dp split's" in text) is kept and ("these stages are that round's" in text) is not kept
    # another baseline priced faster, not measured: the caveat for it stays
    faster = replace(done, baselines={**done.baselines, "uniform": replace(entries["dp"], iteration_s=0.9 * step)})
    assert "a faster baseline here is not measured" in format_plan(faster)
