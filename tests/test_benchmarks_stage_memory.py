"""benchmarks/bench_stage_memory.py's counter: storages made by aten calls, held and freed."""

from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from benchmarks.bench_stage_memory import StorageCounter


def test_the_counter_holds_what_is_alive_and_leaves_out_what_it_is_told() -> None:
    w = torch.ones(256, 256)  # 256 KiB, made before: excluded
    with StorageCounter([w]) as counter:
        a = torch.ones(1024, 256)  # 1 MiB
        b = a @ w                  # 1 MiB more
        view = b[:10]              # a view: no new storage
        del a
        c = torch.zeros(512, 256)  # 0.5 MiB, while b is alive
        with FakeTensorMode():
            torch.empty(4096, 4096)  # fake: no memory
        torch.empty(8, device="meta")
    assert counter.peak == 2 << 20
    assert counter.live == (1 << 20) + (1 << 19)  # b (through its view) and c
    assert set(counter.at_peak) == {"ones.default", "mm.default"}
    del b, c, view
    assert counter.live == 0
