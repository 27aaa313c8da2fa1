"""Tests for autopipe/runtime/affinity.py: each CPU rank on its own cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from autopipe.runtime.affinity import allowed_cpus, core_share, parse_cpu_list

needs_two_cpus = pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2
    or os.sched_getaffinity(0) != allowed_cpus(),
    reason="needs Linux and two CPUs this process is not bound away from")


def test_cpu_lists_parse_as_the_kernel_writes_them() -> None:
    assert parse_cpu_list("0-3,8,10-11\n") == {0, 1, 2, 3, 8, 10, 11}
    assert parse_cpu_list("5") == {5}
    with pytest.raises(ValueError):
        parse_cpu_list("3-1")
    with pytest.raises(ValueError):
        parse_cpu_list("a-b")


def test_each_local_rank_gets_an_equal_contiguous_share() -> None:
    cpus = [6, 0, 1, 7, 2, 3, 4, 5]
    assert [core_share(r, 2, cpus) for r in range(2)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [core_share(r, 3, cpus) for r in range(3)] == [[0, 1], [2, 3], [4, 5]]  # 6, 7 unused
    assert core_share(0, 4, [0, 1]) is None  # fewer CPUs than ranks
    assert core_share(2, 2, cpus) is None


_PROBE = """
import json, os, threading, time
from autopipe.runtime.affinity import pin_cores
if {bind}:
    os.sched_setaffinity(0, {{min(os.sched_getaffinity(0))}})
stop = threading.Event()
early = threading.Thread(target=stop.wait)  # started before pinning: pinned all the same
early.start()
share = pin_cores({rank}, {world})
late = threading.Thread(target=stop.wait)
late.start()
tids = [early.native_id, late.native_id, threading.get_native_id()]
print(json.dumps({{"share": share, "threads": [sorted(os.sched_getaffinity(t)) for t in tids]}}))
stop.set()
"""


def _probe(rank: int, world: int, bind: bool = False) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", _PROBE.format(rank=rank, world=world, bind=bind)],
                         capture_output=True, text=True, check=True)
    result: dict[str, object] = json.loads(out.stdout)
    return result


@needs_two_cpus
def test_every_thread_of_a_rank_keeps_to_its_share() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    for rank in range(2):
        share = core_share(rank, 2, cpus)
        assert share is not None
        assert _probe(rank, 2) == {"share": share, "threads": [share] * 3}


@needs_two_cpus
def test_a_process_bound_by_the_user_is_left_alone() -> None:
    first = min(os.sched_getaffinity(0))
    assert _probe(1, 2, bind=True) == {"share": None, "threads": [[first]] * 3}


def test_one_rank_or_too_few_cpus_pins_nothing() -> None:
    assert _probe(0, 1)["share"] is None
    assert _probe(0, (os.cpu_count() or 1) + 1)["share"] is None
