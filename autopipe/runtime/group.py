"""The process group of a pipeline job: torchrun's environment, joining it, and failures of peers."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import traceback
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from autopipe.errors import AutopipeError, PlanMismatchError, RuntimeStageError
from autopipe.plan_format import Plan
from autopipe.runtime.placement import grid_position, rank_of_stages


def distributed_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the default process group or the torchrun environment.

    Raises:
        AutopipeError: the torchrun variables are not integers, or ``RANK`` is outside ``WORLD_SIZE``.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as e:
        raise AutopipeError(f"bad torchrun environment: {e}",
                            hint="RANK, WORLD_SIZE and LOCAL_RANK must be integers") from None
    if not 0 <= rank < world:
        raise AutopipeError(f"RANK {rank} is outside WORLD_SIZE {world}",
                            hint="start the ranks with torchrun or autopipe train --launch")
    return rank, world, local


def local_world(world: int) -> int:
    """Ranks on this machine: torchrun's ``LOCAL_WORLD_SIZE``, else 1 (unknown: pin nothing)."""
    try:
        return min(world, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def init_process_group(rank: int, world: int, device: torch.device, timeout_s: float) -> bool:
    """Join (or create) the default process group; True when this call created it.

    Raises:
        AutopipeError: a world of several ranks without ``MASTER_ADDR``/``MASTER_PORT``.
        RuntimeStageError: the rendezvous failed (a rank did not come within ``timeout_s``).
    """
    if dist.is_initialized():
        return False
    if world == 1:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    elif "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        raise AutopipeError(f"WORLD_SIZE is {world} but MASTER_ADDR/MASTER_PORT are not set",
                            hint="start the ranks with torchrun or autopipe train --launch")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        dist.init_process_group(backend, rank=rank, world_size=world,
                                timeout=timedelta(seconds=timeout_s))
    except Exception as e:
        raise RuntimeStageError(f"rank {rank} could not join the {world}-rank process group: {short_error(e)}",
                                hint=f"all {world} ranks must start within --timeout "
                                     f"({timeout_s:g} s) and reach MASTER_ADDR:MASTER_PORT") from e
    return True


def rank_device(plan: Plan, rank: int, local_rank: int, choice: str = "auto") -> torch.device:
    """The device this rank computes on.

    ``auto`` follows the plan: a stage device ``cuda``/``cuda:k`` runs on this node's GPU
    number ``LOCAL_RANK`` (modulo the GPU count), ``cpu`` on the CPU, and any other label
    (``gpu-a``) on CUDA where there is one.

    Raises:
        PlanMismatchError: CUDA is asked for but torch sees none.
    """
    if choice == "auto":
        ranks = rank_of_stages(plan)
        position = grid_position(plan, rank)[0]
        label = next(s.device for s in plan.stages if ranks[s.index] == position)
        try:
            kind = torch.device(label).type
        except (RuntimeError, ValueError):
            kind = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        kind = choice
    if kind == "cpu":
        return torch.device("cpu")
    if kind != "cuda" or not torch.cuda.is_available():
        raise PlanMismatchError(f"rank {rank} should run on {kind} but torch sees no CUDA device",
                                hint="pass --device cpu to train this plan on CPUs")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def free_port() -> int:
    """A TCP port on localhost that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def failures(where: str, when: str, timeout_s: float) -> Iterator[None]:
    """Turn a failure of torch or a peer into a RuntimeStageError that says where and when."""
    try:
        yield
    except AutopipeError:
        raise
    except Exception as e:
        if peer_lost(e):
            # gloo's "[.../pair.cc:553] Connection closed by peer [127.0.0.1]:50894. This is typically ..."
            said = re.sub(r"\[[^\]]*\.cc:\d+\] ", "", short_error(e)).split(". This is typically")[0]
            raise RuntimeStageError(f"{where} lost a peer rank (it died, or was silent for longer than --timeout "
                                    f"{timeout_s:g} s) {when}: {said}",
                                    hint="the rank that failed first names the cause in its own output") from e
        at = code_line(e)
        alone = not dist.is_initialized() or dist.get_world_size() == 1
        raise RuntimeStageError(f"{where} failed {when}: {short_error(e)}" + (f" (at {at})" if at else ""),
                                hint=None if alone else "this is the cause; the other ranks stop when they "
                                                        "lose this one") from e


def code_line(e: BaseException) -> str | None:
    """``file:line in function`` of the innermost frame of the error's own code (a spec's loss, a
    model's forward): neither torch's nor autopipe's nor Python's; None where all are theirs."""
    skip = tuple(str(d) + os.sep for d in (Path(torch.__file__).resolve().parent, Path(__file__).resolve().parents[1],
                                           Path(contextlib.__file__).resolve().parent))
    seen: BaseException | None = e
    while seen is not None and seen.__cause__ is not None:  # torch wraps a stage's failure
        seen = seen.__cause__
    for frame in reversed(traceback.extract_tb(seen.__traceback__) if seen is not None else []):
        path = str(Path(frame.filename).resolve())
        if not path.startswith(skip) and not frame.filename.startswith("<"):
            return f"{frame.filename}:{frame.lineno} in {frame.name}"
    return None


_PEER_LOST = ("closed by peer", "reset by peer", "timed out", "timeout", "broken pipe",
              "connection refused", "communicator was aborted", "remote process exited")


def peer_lost(e: BaseException) -> bool:
    """Whether an error from the communication layer means another rank is gone or hung."""
    seen: BaseException | None = e
    while seen is not None:
        if any(t in str(seen).lower() for t in _PEER_LOST):
            return True
        seen = seen.__cause__
    return False


def short_error(e: BaseException) -> str:
    """First line of an error, and of what caused it (torch wraps stage failures)."""
    parts: list[str] = []
    seen: BaseException | None = e
    while seen is not None and len(parts) < 3:
        lines = [ln.strip() for ln in str(seen).strip().splitlines() if ln.strip()]
        parts.append(f"{type(seen).__name__}: {lines[0] if lines else ''}".strip())
        seen = seen.__cause__
    text = "; caused by ".join(parts)
    return text if len(text) <= 400 else text[:400] + "…"
