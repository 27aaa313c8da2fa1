"""Start the ranks of a job on this machine (a small torchrun): one process per rank, none left hanging.

When a rank exits with an error the others normally fail fast too (their sends and
receives to it break); any still running ``grace_s`` seconds later are terminated, so a
dead rank never leaves a job hanging.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

from autopipe.runtime.group import free_port


@dataclass(frozen=True, slots=True)
class LaunchResult:
    """How the ranks ended."""

    codes: tuple[int, ...]
    """Exit code per rank (negative: killed by that signal)."""
    first_failed: int | None
    """The rank that failed first, if any."""
    stopped: tuple[int, ...]
    """Ranks the launcher had to terminate."""
    timed_out: bool
    """The whole job ran past ``timeout_s``."""

    @property
    def code(self) -> int:
        """One exit code for the job: 0, else the first failing rank's code (1 for signals)."""
        if self.first_failed is None:
            return 1 if self.timed_out else 0
        c = self.codes[self.first_failed]
        return c if c > 0 else 1


def launch(
    cmd: Sequence[str],
    nprocs: int,
    *,
    env: Mapping[str, str] | None = None,
    grace_s: float = 30.0,
    timeout_s: float | None = None,
    stdout: IO[Any] | int | None = None,
    stderr: IO[Any] | int | None = None,
    log: Any = None,
) -> LaunchResult:
    """Run ``cmd`` as ranks ``0..nprocs-1`` of one job on localhost and wait for all of them.

    Each process gets the torchrun environment: ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
    ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR=127.0.0.1`` and a free ``MASTER_PORT``.

    Args:
        cmd: the command line of one rank.
        nprocs: number of ranks.
        env: extra environment variables for every rank.
        grace_s: after the first rank fails, how long the others get to stop by themselves.
        timeout_s: stop every rank after this long (None: no limit).
        stdout: where the ranks' stdout goes (default: inherited).
        stderr: where the ranks' stderr goes (default: inherited).
        log: a file to report failures to (default: ``sys.stderr``).
    """
    if nprocs < 1:
        raise ValueError(f"nprocs must be positive, got {nprocs}")
    log = log if log is not None else sys.stderr
    port = str(free_port())
    # like torchrun: ranks sharing the CPUs should not each start one thread per core
    threads = {} if "OMP_NUM_THREADS" in os.environ else {
        "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nprocs))}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for r in range(nprocs):
            e = {**os.environ, **threads, **(env or {}), "RANK": str(r), "LOCAL_RANK": str(r),
                 "WORLD_SIZE": str(nprocs), "LOCAL_WORLD_SIZE": str(nprocs),
                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
            procs.append(subprocess.Popen(list(cmd), env=e, stdout=stdout, stderr=stderr))
        return _wait(procs, grace_s, timeout_s, log)
    finally:
        _stop([p for p in procs if p.poll() is None])


def _wait(procs: list[subprocess.Popen[bytes]], grace_s: float, timeout_s: float | None,
          log: Any) -> LaunchResult:
    start = time.monotonic()
    first_failed: int | None = None
    failed_at = 0.0
    stopped: list[int] = []
    timed_out = False
    while True:
        codes = [p.poll() for p in procs]
        now = time.monotonic()
        if first_failed is None:
            bad = [r for r, c in enumerate(codes) if c not in (None, 0)]
            if bad:
                first_failed, failed_at = bad[0], now
                if any(c is None for c in codes):
                    print(f"autopipe launch: rank {first_failed} exited with code {codes[first_failed]}; "
                          f"stopping the others within {grace_s:g} s", file=log, flush=True)
        if all(c is not None for c in codes):
            break
        late = first_failed is not None and now - failed_at > grace_s
        timed_out = timeout_s is not None and now - start > timeout_s
        if late or timed_out:
            stopped = [r for r, c in enumerate(codes) if c is None]
            if timed_out:
                print(f"autopipe launch: job ran past {timeout_s:g} s; stopping ranks {stopped}",
                      file=log, flush=True)
            _stop([procs[r] for r in stopped])
            continue
        time.sleep(0.05)
    final = tuple(int(p.returncode) for p in procs)
    return LaunchResult(codes=final, first_failed=first_failed, stopped=tuple(stopped),
                        timed_out=timed_out)


def _stop(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    """SIGTERM, then SIGKILL whatever is still alive two seconds later."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 2.0
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
