"""One rank of pipeline training: check the plan, split the model, run the schedule, report."""

from __future__ import annotations

import contextlib
import inspect
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from autopipe._malloc import pin_malloc
from autopipe._units import format_size
from autopipe.errors import AutopipeError, PlanMismatchError, RuntimeStageError, SpecError
from autopipe.plan_format import Plan
from autopipe.runtime.affinity import pin_cores
from autopipe.runtime.materialize import materialize_stages
from autopipe.runtime.meta import StageMeta, stage_metas
from autopipe.runtime.optim import TrainConfig, make_optimizer
from autopipe.runtime.placement import check_world_size, rank_of_stages
from autopipe.runtime.split import Split
from autopipe.runtime.stage import Pipeline, build_pipeline
from autopipe.runtime.tied import TiedParams, canonical_names, replicated, stage_params
from autopipe.runtime.validate import model_constants, validate_plan
from autopipe.spec import ModelSpec
from autopipe.trace import Graph, trace


@dataclass
class Prepared:
    """Everything a rank needs before it joins the process group; built identically on every rank."""

    graph: Graph
    split: Split
    metas: list[StageMeta]
    constants: dict[str, Any]
    """Model inputs that are not tensors, baked into stage 0."""
    input_names: list[str]
    """Placeholder names of the model's flat inputs, in order."""


@dataclass
class TrainResult:
    """What one rank did."""

    rank: int
    world_size: int
    stages: tuple[int, ...]
    """Stage indices this rank ran."""
    device: str
    losses: list[float] = field(default_factory=list)
    """Mean micro-batch loss per step (only on the rank that runs the last stage)."""
    step_s: list[float] = field(default_factory=list)
    """Wall time of each step on this rank."""
    step_cpu_s: list[float] = field(default_factory=list)
    """CPU time this process used in each step (all its threads)."""
    peak_memory: dict[int, int] = field(default_factory=dict)
    """Rank → peak CUDA memory allocated, bytes (CUDA only; gathered on the last stage's rank)."""
    modules: dict[int, nn.Module] = field(default_factory=dict)
    """Stage index → this rank's trained stage module."""

    @property
    def steps_per_s(self) -> float:
        """Steps per second after the first (warm-up) step; over all steps if there is one."""
        times = self.step_s[1:] or self.step_s
        return len(times) / sum(times) if times and sum(times) > 0 else 0.0


def prepare(spec: ModelSpec, plan: Plan, world_size: int, graph: Graph | None = None) -> Prepared:
    """Trace the model and check the plan against it and the world size; split it into stages.

    Runs before any process group exists, so a wrong plan stops every rank (or the
    launcher) with a clear error instead of failing mid-step.

    The plan is checked with ``validate_plan``, as every command that reads a plan does.

    Raises:
        PlanMismatchError: the plan was made for another model, micro-batch shape or world size.
        PlanError: the plan cannot be run (a non-tensor crosses a cut, unknown schedule, ...).
        SpecError: the spec has tensor keyword inputs (batches are positional).
    """
    check_world_size(plan, world_size)
    tensor_kwargs = sorted(k for k, v in spec.example_kwargs.items() if isinstance(v, torch.Tensor))
    if tensor_kwargs:
        raise SpecError(f"example keyword input {tensor_kwargs[0]!r} is a tensor, but spec.batch() "
                        f"gives positional inputs only",
                        hint="make the model take its tensors positionally")
    if graph is None:
        graph = trace(spec.model, spec.example_inputs, spec.example_kwargs)
    constants = model_constants(graph, spec)
    split = validate_plan(plan, graph, constants=constants)
    assert split is not None
    flat = graph.flat_inputs(spec.example_inputs, spec.example_kwargs)
    names = [n.name for n in graph.gm.graph.nodes if n.op == "placeholder"]
    # the model's inputs go in contiguous (see _step_data): torch checks their strides
    metas = stage_metas(split, [v.contiguous() for v in flat if isinstance(v, torch.Tensor)])
    return Prepared(graph=graph, split=split, metas=metas, constants=constants, input_names=names)


def train(
    spec: ModelSpec,
    plan: Plan,
    config: TrainConfig,
    *,
    prepared: Prepared | None = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train ``spec``'s model with ``plan`` as one rank of a pipeline.

    The rank, world size and rendezvous come from the torchrun environment (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), or from an
    already initialised default process group; without either, this is a world of one.
    Every rank draws the same ``spec.batch(microbatches, step)``; stage 0 feeds the
    inputs, the last stage computes ``spec.loss_fn`` per micro-batch, and gradients are
    averaged over micro-batches (the mean loss), so training equals one process running
    the same micro-batches. The rank of the last stage logs each step and a summary.

    Raises:
        PlanMismatchError: wrong model, micro-batch shape or world size (before any rank starts).
        RuntimeStageError: a peer died or stopped answering within ``config.timeout_s``.
    """
    rank, world, local_rank = _distributed_env()
    prepared = prepared or prepare(spec, plan, world)
    device = rank_device(plan, rank, local_rank, config.device)
    if device.type == "cpu" and config.pin_malloc:
        pin_malloc()  # [Note: pinned malloc on CPU ranks]
    if device.type == "cpu" and config.pin_cores:
        # before the process group, so that gloo's threads start on the rank's cores
        pin_cores(local_rank, _local_world(world))  # [Note: pinned cores on CPU ranks]
    materialize_stages([st.module for st in prepared.split.stages if rank_of_stages(plan)[st.index] == rank],
                       spec, device, init=config.init)  # only this rank's tensors: meta-built models
    created = _init_process_group(rank, world, device, config.timeout_s)
    try:
        return _run(spec, plan, config, prepared, rank, world, device, log)
    finally:
        if created:
            dist.destroy_process_group()


def _run(spec: ModelSpec, plan: Plan, config: TrainConfig, prep: Prepared, rank: int, world: int,
         device: torch.device, log: Callable[[str], None]) -> TrainResult:
    graph, split = prep.graph, prep.split

    def loss_fn(out: Any, target: torch.Tensor) -> torch.Tensor:
        flat = split.rebuild_outputs(out if isinstance(out, (tuple, list)) else (out,))
        return spec.loss_fn(graph.unflatten_output(flat), target)

    pipe = build_pipeline(split, prep.metas, plan, rank, device, loss_fn)
    where = f"rank {rank} (stage{'s' if len(pipe.stages) > 1 else ''} {', '.join(map(str, pipe.indices))})"
    canonical = canonical_names(graph)
    ranks = rank_of_stages(plan)
    holders: dict[str, list[int]] = {}
    for st in split.stages:
        for name in stage_params(st.module, canonical):
            holders.setdefault(name, []).append(ranks[st.index])
    mine: dict[str, nn.Parameter] = {}
    for module in pipe.modules():
        mine.update(stage_params(module, canonical))
    with _failures(where, "while syncing tied parameters", config.timeout_s):
        tied = TiedParams(replicated(holders), mine)
        tied.broadcast_values()
    optimizer = make_optimizer(mine.values(), config)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    result = TrainResult(rank=rank, world_size=world, stages=pipe.indices, device=str(device),
                         modules={s.stage_index: s.submod for s in pipe.stages})
    step_kwargs = {"return_outputs": False} if _accepts(pipe.schedule.step, "return_outputs") else {}
    m = plan.microbatches
    if pipe.has_last:
        log(f"training {spec.name}: {plan.num_stages} stages on {world} ranks, schedule "
            f"{plan.schedule}, {m} micro-batches, {config.steps} steps, {config.optimizer} lr {config.lr:g}")
    for step in range(config.steps):
        args, target = _step_data(spec, prep, m, step, device)
        t0, c0 = time.perf_counter(), time.process_time()
        losses: list[torch.Tensor] = []
        with _failures(where, f"in step {step + 1}", config.timeout_s):
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
            pipe.schedule.step(*(args if pipe.has_first else ()),
                               target=target if pipe.has_last else None,
                               losses=losses if pipe.has_last else None, **step_kwargs)
            for p in mine.values():
                if p.grad is not None:
                    p.grad.div_(m)  # the mean over micro-batches, once per parameter
            tied.all_reduce_grads()
            if optimizer is not None:
                optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        result.step_s.append(dt)
        result.step_cpu_s.append(time.process_time() - c0)
        if pipe.has_last:
            loss = torch.stack([x.detach().float() for x in losses]).mean().item()
            result.losses.append(loss)
            log(f"step {step + 1}/{config.steps}  loss {loss:.6f}  time {dt * 1e3:.1f} ms")
    with _failures(where, "while gathering the summary", config.timeout_s):
        _summary(plan, pipe, result, device, ranks, log)
    return result


@contextlib.contextmanager
def _failures(where: str, when: str, timeout_s: float) -> Iterator[None]:
    """Turn a failure of torch or a peer into a RuntimeStageError that says where and when."""
    try:
        yield
    except AutopipeError:
        raise
    except Exception as e:
        what = (f"lost a peer rank (it died, or was silent for longer than --timeout {timeout_s:g} s)"
                if _peer_lost(e) else "failed")
        raise RuntimeStageError(f"{where} {what} {when}: {_short(e)}",
                                hint="the rank that failed first names the cause in its own output") from e


def _summary(plan: Plan, pipe: Pipeline, result: TrainResult, device: torch.device,
             ranks: Sequence[int], log: Callable[[str], None]) -> None:
    peaks: list[Any] = [None] * result.world_size
    mine = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    dist.all_gather_object(peaks, mine)
    if mine is not None:
        result.peak_memory = {r: int(v) for r, v in enumerate(peaks) if v is not None}
    if not pipe.has_last:
        return
    total = sum(result.step_s)
    log(f"done: {len(result.step_s)} steps in {total:.3f} s, {result.steps_per_s:.3f} steps/s "
        f"after the first step (first step {result.step_s[0]:.3f} s)")
    for r, peak in sorted(result.peak_memory.items()):
        stages = [s for s in range(plan.num_stages) if ranks[s] == r]
        predicted = sum(_predicted_peak(plan, s) for s in stages)
        log(f"  rank {r} (stage {', '.join(map(str, stages))}): peak {format_size(peak)} CUDA memory, "
            f"plan predicted {format_size(predicted)}")


def _predicted_peak(plan: Plan, stage: int) -> int:
    peaks = plan.predicted.peak_memory
    return int(peaks[stage]) if stage < len(peaks) else plan.stages[stage].memory.total


def _step_data(spec: ModelSpec, prep: Prepared, m: int, step: int,
               device: torch.device) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The step's micro-batches as the model's flat tensor inputs (on ``device``) and the target."""
    inputs, target = spec.batch(m, step)
    flat = prep.graph.flat_inputs(tuple(inputs), spec.example_kwargs)
    tensors = []
    for name, v in zip(prep.input_names, flat):
        if name in prep.constants:
            if not _same(v, prep.constants[name]):
                raise SpecError(f"input {name!r} is {v!r} in step {step + 1} but {prep.constants[name]!r} "
                                f"in the example micro-batch",
                                hint="non-tensor inputs must stay the same in every batch")
            continue
        # contiguous wherever they come from: a copy to CUDA makes a sliced batch contiguous
        # while it stays strided on the CPU, and torch 2.11 refuses a stride it did not expect
        tensors.append(v.to(device).contiguous())
    return tensors, target.to(device)


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return a is b


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
        label = next(s.device for s in plan.stages if ranks[s.index] == rank)
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


def _local_world(world: int) -> int:
    """Ranks on this machine: torchrun's ``LOCAL_WORLD_SIZE``, else 1 (unknown: pin nothing)."""
    try:
        return min(world, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def _distributed_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the default process group or the torchrun environment."""
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


def _init_process_group(rank: int, world: int, device: torch.device, timeout_s: float) -> bool:
    """Join (or create) the default process group; True when this call created it."""
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
        raise RuntimeStageError(f"rank {rank} could not join the {world}-rank process group: {_short(e)}",
                                hint=f"all {world} ranks must start within --timeout "
                                     f"({timeout_s:g} s) and reach MASTER_ADDR:MASTER_PORT") from e
    return True


def free_port() -> int:
    """A TCP port on localhost that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


_PEER_LOST = ("closed by peer", "reset by peer", "timed out", "timeout", "broken pipe",
              "connection refused", "communicator was aborted", "remote process exited")


def _peer_lost(e: BaseException) -> bool:
    """Whether an error from the communication layer means another rank is gone or hung."""
    seen: BaseException | None = e
    while seen is not None:
        if any(t in str(seen).lower() for t in _PEER_LOST):
            return True
        seen = seen.__cause__
    return False


def _short(e: BaseException) -> str:
    """First line of an error, and of what caused it (torch wraps stage failures)."""
    parts: list[str] = []
    seen: BaseException | None = e
    while seen is not None and len(parts) < 3:
        lines = [ln.strip() for ln in str(seen).strip().splitlines() if ln.strip()]
        parts.append(f"{type(seen).__name__}: {lines[0] if lines else ''}".strip())
        seen = seen.__cause__
    text = "; caused by ".join(parts)
    return text if len(text) <= 400 else text[:400] + "…"
