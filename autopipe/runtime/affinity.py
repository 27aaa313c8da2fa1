"""Give each CPU rank on a machine its own cores.

# [Note: pinned cores on CPU ranks]
Left to the scheduler, the ranks' threads (each rank's compute thread and
gloo's network thread) move between the cores. On this 2-core VM a woken
thread often lands on the core where the other rank computes, and a rank's
compute thread then waits, runnable, for milliseconds: in slow steps of the
MLP example its sends and receives took 2–3 ms of wall time for 0.3–0.4 ms of
CPU time. With each rank's threads held to their own cores, the MLP's median
step in ``benchmarks.bench_simulator`` was 6.5–7.2 ms against 7.1–11.9 ms
shared (six rounds each way, interleaved; ``docs/training.md``).

``pin_cores`` splits the CPUs this process may use into ``LOCAL_WORLD_SIZE``
equal, contiguous shares and holds every thread of local rank ``r`` to share
``r``. It does nothing where there are fewer CPUs than local ranks, or where
the process was already bound to fewer CPUs than its control group allows (a
user's ``taskset`` or ``numactl`` wins).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

_CPUSETS = ("/sys/fs/cgroup/cpuset.cpus.effective",  # cgroup v2 (at the root of the process's view)
            "/sys/fs/cgroup/cpuset/cpuset.effective_cpus")  # cgroup v1


def parse_cpu_list(text: str) -> set[int]:
    """CPUs in the kernel's list format (``0-3,8,10-11``).

    Raises:
        ValueError: not such a list.
    """
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        first, last = int(lo), int(hi or lo)
        if first < 0 or last < first:
            raise ValueError(f"bad CPU range {part!r}")
        cpus.update(range(first, last + 1))
    return cpus


def allowed_cpus() -> set[int]:
    """The CPUs this process's control group allows (all online CPUs when none says)."""
    for path in _CPUSETS:
        try:
            cpus = parse_cpu_list(Path(path).read_text())
        except (OSError, ValueError):
            continue
        if cpus:
            return cpus
    return set(range(os.cpu_count() or 1))


def core_share(local_rank: int, local_world: int, cpus: Sequence[int]) -> list[int] | None:
    """Local rank ``local_rank``'s share of ``cpus``: ``len(cpus) // local_world`` of them,
    contiguous in sorted order (the remainder goes unused); None where there are fewer
    CPUs than ranks or the rank is out of range."""
    ordered = sorted(cpus)
    per = len(ordered) // local_world if local_world > 0 else 0
    if per < 1 or not 0 <= local_rank < local_world:
        return None
    return ordered[local_rank * per:(local_rank + 1) * per]


def pin_cores(local_rank: int, local_world: int) -> list[int] | None:
    """Hold every thread of this process to its local rank's cores ([Note: pinned cores on CPU ranks]).

    Threads started later inherit the binding. Does nothing (returns None) where
    the platform cannot bind threads, there are fewer CPUs than local ranks, or the
    process is already bound to fewer CPUs than its control group allows.

    Returns:
        The cores now used, or None.
    """
    if not hasattr(os, "sched_setaffinity") or local_world < 2:
        return None
    mine = os.sched_getaffinity(0)
    if mine != allowed_cpus():
        return None  # bound by the user: leave it
    share = core_share(local_rank, local_world, sorted(mine))
    if share is None:
        return None
    tasks = Path("/proc/self/task")
    tids = [int(t) for t in os.listdir(tasks)] if tasks.is_dir() else [0]
    for tid in tids:
        try:
            os.sched_setaffinity(tid, share)
        except OSError:  # a thread that has just exited
            continue
    return share
