"""The busy-core thread of pinned CPU ranks, and the hook that runs torch's messages inside it."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from torch.distributed.pipelining import schedules

from autopipe._torch_pipelining import messages_within
from autopipe.runtime.busy_core import BusyCore


def _cpu_s(native_id: int) -> float:
    """Seconds thread ``native_id`` of this process has run on a CPU (``schedstat``)."""
    return int(Path(f"/proc/self/task/{native_id}/schedstat").read_text().split()[0]) / 1e9


def _spinner(core: BusyCore) -> int:
    native_id = core._thread.native_id
    assert native_id is not None and core._thread.name == "autopipe-busy-core"
    return native_id


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc")
def test_it_spins_inside_busy_and_sleeps_outside() -> None:
    core = BusyCore()
    try:
        tid = _spinner(core)
        before = _cpu_s(tid)
        time.sleep(0.3)
        idle = _cpu_s(tid) - before
        with core.busy():
            before = _cpu_s(tid)
            time.sleep(0.3)  # this thread sleeps, so the spinner has a core to itself
            spun = _cpu_s(tid) - before
        assert idle < 0.01
        assert spun > 0.05
    finally:
        core.close()


def test_close_ends_the_thread_even_while_busy_and_twice() -> None:
    core = BusyCore()
    with core.busy():
        assert core.alive
        core.close()
    assert not core.alive
    core.close()
    assert not core.alive


def test_torch_posts_and_waits_inside_it_and_only_there(monkeypatch: pytest.MonkeyPatch) -> None:
    post, wait = schedules._batch_p2p, schedules._wait_batch_p2p
    entered: list[str] = []

    @contextlib.contextmanager
    def around() -> Iterator[None]:
        entered.append("in")
        yield
        entered.append("out")

    yields: list[int] = []
    monkeypatch.setattr(os, "sched_yield", lambda: yields.append(len(entered)))
    with messages_within(around):
        assert schedules._batch_p2p([]) == []  # nothing to post: what torch returns
        schedules._wait_batch_p2p([])
        assert entered == ["in", "out", "in", "out"]
    monkeypatch.undo()
    assert yields == [1]  # once, inside the busy spell, before posting; not before waiting
    assert (schedules._batch_p2p, schedules._wait_batch_p2p) == (post, wait)
    schedules._batch_p2p([])
    assert entered == ["in", "out", "in", "out"]


def test_the_originals_come_back_when_the_body_raises() -> None:
    post, wait = schedules._batch_p2p, schedules._wait_batch_p2p
    with pytest.raises(RuntimeError, match="peer died"), messages_within(contextlib.nullcontext):
        raise RuntimeError("peer died")
    assert (schedules._batch_p2p, schedules._wait_batch_p2p) == (post, wait)
