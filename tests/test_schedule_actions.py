"""Tests for autopipe/schedule/actions.py: the per-rank programs of each schedule."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import pytest

from autopipe.errors import PlanError
from autopipe.schedule.actions import (
    SCHEDULES,
    Action,
    autopipe_order,
    check_runnable,
    order_problems,
    schedule_order,
)


def _programs(schedule: str, p: int, m: int, v: int = 1) -> list[str]:
    order = schedule_order(schedule, p, m, v)
    return [" ".join(f"{a.kind}{a.microbatch}" for a in rank) for rank in order.ranks]


def test_1f1b_program_matches_the_docstring_picture() -> None:
    assert _programs("1f1b", 4, 6) == [
        "F0 F1 F2 F3 B0 F4 B1 F5 B2 B3 B4 B5",
        "F0 F1 F2 B0 F3 B1 F4 B2 F5 B3 B4 B5",
        "F0 F1 B0 F2 B1 F3 B2 F4 B3 F5 B4 B5",
        "F0 B0 F1 B1 F2 B2 F3 B3 F4 B4 F5 B5",
    ]


def test_gpipe_runs_all_forwards_then_all_backwards() -> None:
    assert _programs("gpipe", 2, 3) == ["F0 F1 F2 B0 B1 B2"] * 2


def test_1f1b_with_fewer_microbatches_than_ranks_degenerates_to_fill_drain() -> None:
    assert _programs("1f1b", 4, 2)[0] == "F0 F1 B0 B1"


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_every_order_is_valid(schedule: str) -> None:
    for p, m, v in itertools.product(range(1, 6), range(1, 13), (1, 2, 3)):
        if schedule in ("gpipe", "1f1b") and v > 1:
            continue
        try:
            order = schedule_order(schedule, p, m, v)
        except PlanError:
            assert schedule in ("interleaved-1f1b", "zb-h1") or (schedule == "zbv" and v != 2) \
                or (schedule == "dualpipev" and (v != 2 or m < 2 * p))
            continue
        assert order_problems(order) == [], (schedule, p, m, v)


@pytest.mark.parametrize("schedule", ["interleaved-1f1b", "zb-h1"])
def test_runtime_schedules_come_from_torch_and_match_our_mirror(schedule: str) -> None:
    for p, m, v in itertools.product(range(1, 6), range(1, 13), (1, 2, 3)):
        try:
            ours = autopipe_order(schedule, p, m, v)
        except PlanError:
            continue
        theirs = schedule_order(schedule, p, m, v)
        assert theirs.source == "torch"
        assert theirs.ranks == ours.ranks, (schedule, p, m, v)
        assert theirs.split_backward == ours.split_backward == (schedule == "zb-h1")


def test_zb_h1_delays_weight_gradients_by_rank() -> None:
    order = schedule_order("zb-h1", 4, 8)
    for r, program in enumerate(order.ranks):
        first_w = next(i for i, a in enumerate(program) if a.kind == "W")
        backwards_before = sum(1 for a in program[:first_w] if a.kind == "B")
        assert backwards_before == r + 1


def test_interleaved_places_stage_s_on_rank_s_mod_p() -> None:
    order = schedule_order("interleaved-1f1b", 2, 4, 2)
    assert {a.stage for a in order.ranks[0]} == {0, 2}
    assert {a.stage for a in order.ranks[1]} == {1, 3}


def test_order_problems_reports_a_backward_before_its_forward() -> None:
    good = schedule_order("gpipe", 1, 2)
    swapped = (Action(0, "B", 0), Action(0, "F", 0), Action(0, "F", 1), Action(0, "B", 1))
    from dataclasses import replace
    bad = replace(good, ranks=(swapped,))
    assert any("before F0" in line for line in order_problems(bad))
    missing = replace(good, ranks=(good.ranks[0][:-1],))
    assert any("missing" in line for line in order_problems(missing))


def test_unknown_schedule_names_the_known_ones() -> None:
    with pytest.raises(PlanError, match="unknown schedule 'pipedream'") as e:
        schedule_order("pipedream", 2, 4)
    assert e.value.hint is not None and "zb-h1" in e.value.hint


def test_virtual_stages_need_an_interleaved_schedule() -> None:
    with pytest.raises(PlanError, match="runs one stage per rank"):
        schedule_order("1f1b", 2, 4, 2)


def test_interleaved_microbatches_must_divide_into_rounds() -> None:
    with pytest.raises(PlanError, match="multiple of its 2 rounds, got 5") as e:
        schedule_order("interleaved-1f1b", 2, 5, 2)
    assert e.value.hint == "use 4 or 6 micro-batches"


def test_check_runnable_refuses_1f1b_with_fewer_microbatches_than_stages() -> None:
    check_runnable("1f1b", 4, 4)
    check_runnable("gpipe", 4, 2)
    with pytest.raises(PlanError, match=r"\(2 micro-batches, 4 stages\)"):
        check_runnable("1f1b", 4, 2)


@pytest.mark.distributed
def test_torch_runs_exactly_the_simulated_orders(tmp_path: Path) -> None:
    from autopipe.runtime.launch import launch
    from tests.schedule_order_worker import MICROBATCHES, RUNS

    result = launch([sys.executable, "-m", "tests.schedule_order_worker", str(tmp_path)], 2,
                    env={"OMP_NUM_THREADS": "1"}, timeout_s=120)
    assert result.code == 0
    ran = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    deferred = 0
    for name, (_, v) in RUNS.items():
        order = schedule_order(name, 2, MICROBATCHES, v)
        for r in range(2):
            assert [Action(s, k, mb) for s, k, mb in ran[r][name]["ran"]] == list(order.ranks[r]), (name, r)
            # each send is posted once its action (DualPipeV: its overlapped pair) has run
            program = list(order.ranks[r])
            for s, kind, mb, before in ran[r][name]["sent"]:
                i = program.index(Action(s, kind, mb))
                after = order.send_after[r][i] if order.send_after else i
                assert before == after + 1, (name, r, s, kind, mb)
                deferred += after > i
    assert deferred > 0  # DualPipeV's overlapped pairs: sends posted after the pair's backward


def test_zbv_comes_from_torch_in_a_v() -> None:
    """torch's ZBV order, read with the stages of rank r at r and 2p−1−r: rank 0 runs the
    first and the last stage, and splits each backward into B and W."""
    order = schedule_order("zbv", 2, 4, 2)
    assert order.source == "torch" and order.split_backward
    assert [order.rank_of(s) for s in range(4)] == [0, 1, 1, 0]
    assert {a.stage for a in order.ranks[0]} == {0, 3} and {a.stage for a in order.ranks[1]} == {1, 2}
    assert order_problems(order) == []


def _pairs(schedule: str, p: int, m: int) -> list[str]:
    """Each rank's program in torch's terms: a full backward (B then W, its send after the
    W) as ``sB``, actions whose sends are posted together in parentheses."""
    order = schedule_order(schedule, p, m, 2)
    out = []
    for r, program in enumerate(order.ranks):
        words: list[str] = []
        i = 0
        while i < len(program):
            a = program[i]
            end = order.send_after[r][i] if order.send_after else i
            if a.kind == "B" and end > i and program[end] == Action(a.stage, "W", a.microbatch):
                words.append(f"{a.stage}B{a.microbatch}")
            elif a.kind == "F" and end > i:
                b = program[i + 1]
                words.append(f"({a.stage}F{a.microbatch} {b.stage}B{b.microbatch})")
            else:
                words.append(f"{a.stage}{'I' if a.kind == 'B' else a.kind}{a.microbatch}")
            i = end + 1 if end > i else i + 1
        out.append(" ".join(words))
    return out


def test_dualpipev_matches_the_note_picture() -> None:
    """[Note: DualPipeV]'s picture (p = 2, m = 4), with (..) where a forward's send waits for
    the backward after it: the pairs whose forward sends something over a link (the last
    stage's forward sends nothing, and 1F3 hands its output to stage 2 on its own rank)."""
    assert _pairs("dualpipev", 2, 4) == [
        "0F0 0F1 0F2 3F0 3I0 3W0 3F1 (0F3 3B1) 3F2 0B0 3B2 3F3 0B1 3B3 0I2 0W2 0I3 0W3",
        "1F0 2F0 1F1 2F1 1F2 2B0 (2F2 1B0) 1F3 2B1 (2F3 1B1) 2B2 1B2 2I3 1I3 2W3 1W3",
    ]


def test_dualpipev_comes_from_torch_and_matches_our_mirror() -> None:
    """torch's lowered program (OVERLAP_F_B expanded, the sends where torch posts them) and
    autopipe/schedule/dualpipev.py give the same actions and send points."""
    for p in range(1, 7):
        for m in range(2 * p, 4 * p + 3):
            theirs = schedule_order("dualpipev", p, m, 2)
            ours = autopipe_order("dualpipev", p, m, 2)
            assert theirs.source == "torch" and ours.source == "autopipe"
            assert theirs.ranks == ours.ranks and theirs.send_after == ours.send_after, (p, m)
            assert theirs.split_backward and theirs.send_after
            assert order_problems(theirs) == [], (p, m)


def test_dualpipev_needs_2p_microbatches() -> None:
    with pytest.raises(PlanError, match=r"\(5 micro-batches, 6 stages on 3 ranks\)") as e:
        schedule_order("dualpipev", 3, 5, 2)
    assert e.value.hint == "use --microbatches 6 or more, or --schedule zbv"


def test_only_dualpipev_posts_sends_after_a_later_action() -> None:
    for schedule, v in (("interleaved-1f1b", 2), ("zb-h1", 1), ("zbv", 2), ("1f1b", 1)):
        assert schedule_order(schedule, 2, 4, v).send_after == ()
