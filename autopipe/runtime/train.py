"""``autopipe train``: one rank of pipeline training through ``Pipe``, with checkpoints, and its report."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from autopipe._units import format_seconds, format_size
from autopipe.batching import example_batch
from autopipe.errors import CheckpointError, RuntimeStageError, SpecError
from autopipe.plan_format import Plan
from autopipe.runtime.affinity import allowed_cpus
from autopipe.runtime.checkpoint import (
    CheckpointInfo,
    check_model,
    check_save,
    find_resumable,
    load_checkpoint,
    read_info,
    read_metadata,
    save_checkpoint,
)
from autopipe.runtime.group import distributed_env, failures, free_port, local_world, rank_device
from autopipe.runtime.materialize import check_init
from autopipe.runtime.optim import Stepper, TrainConfig, make_optimizer
from autopipe.runtime.packing import messages_per_cut
from autopipe.runtime.pipe import Pipe, build
from autopipe.runtime.placement import grid_position, rank_of_stages
from autopipe.runtime.prepare import Prepared, prepare
from autopipe.runtime.timeline import ActionLog, compare, gathered, write_trace
from autopipe.runtime.zero import ShardedOptimizer, optimizer_bytes
from autopipe.spec import ModelSpec

__all__ = ["Prepared", "TrainResult", "check_resume", "check_save", "free_port", "prepare",
           "rank_device", "resume_notes", "train"]


@dataclass
class TrainResult:
    """What one rank did."""

    rank: int
    world_size: int
    stages: tuple[int, ...]
    """Stage indices this rank ran."""
    device: str
    losses: list[float] = field(default_factory=list)
    """Mean micro-batch loss per step over every replica (only on the rank that runs the
    last stage of replica 0)."""
    step_s: list[float] = field(default_factory=list)
    """Wall time of each step on this rank."""
    step_cpu_s: list[float] = field(default_factory=list)
    """CPU time this process used in each step (all its threads)."""
    peak_memory: dict[int, int] = field(default_factory=dict)
    """Rank → peak CUDA memory allocated, bytes (CUDA only; gathered on the last stage's rank)."""
    modules: dict[int, nn.Module] = field(default_factory=dict)
    """Stage index → this rank's trained stage module."""
    start_step: int = 0
    """Steps done before this run (resumed from a checkpoint); ``losses`` start after them."""
    optimizer_params: tuple[str, ...] = ()
    """Names of the parameters this rank's optimizer steps: all of its stages', or with a
    plan that shards the optimizer, those it owns ([Note: the sharded optimizer step])."""
    optimizer_bytes: int = 0
    """Bytes of this rank's optimizer states and fp32 master copies after the last step."""

    @property
    def steps_per_s(self) -> float:
        """Steps per second after the first (warm-up) step; over all steps if there is one."""
        times = self.step_s[1:] or self.step_s
        return len(times) / sum(times) if times and sum(times) > 0 else 0.0


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
    Every rank draws the same ``spec.batch(microbatches × replicas, step)`` and each
    data-parallel replica keeps its share (``Replicas.share``), and of it each rank what its
    stages read (``Pipe.take``); stage 0 feeds the
    inputs, the last stage computes ``spec.loss_fn`` per micro-batch, and gradients are
    averaged over micro-batches and replicas (the mean loss), so training equals one
    process running all the micro-batches. The rank of the last stage logs each step and a summary.

    Raises:
        PlanMismatchError: wrong model, micro-batch shape or world size (before any rank starts).
        RuntimeStageError: a peer died or stopped answering within ``config.timeout_s``.
    """
    rank, world, local_rank = distributed_env()
    prepared = prepared or prepare(spec, plan, world)
    device = rank_device(plan, rank, local_rank, config.device)
    from_step = None
    if config.resume is not None:  # a wrong checkpoint stops every rank before the rendezvous
        info = check_resume(config, spec.model, note=_stderr if rank == 0 else None)
        config = dataclasses.replace(config, resume=str(info.path))  # every rank loads that one
        from_step = info.step
    if config.save is not None:  # not found at the first save, after training
        check_save(config.save, resuming=config.resume is not None, from_step=from_step)
    # a resumed run takes its weights from the checkpoint: --init is not read then
    init = config.init if config.resume is None else None
    on_meta = any(t.is_meta for t in [*spec.model.parameters(), *spec.model.buffers()])
    with build(plan, spec, device=device, init=init, timeout_s=config.timeout_s, prepared=prepared,
               pin_malloc=config.pin_malloc, pin_cores=config.pin_cores,
               flush_denormal=config.flush_denormal, seed=config.seed) as pipe:
        return _run(spec, plan, config, pipe, log, on_meta=on_meta)


def _run(spec: ModelSpec, plan: Plan, config: TrainConfig, pipe: Pipe,
         log: Callable[[str], None], *, on_meta: bool = False) -> TrainResult:
    device = pipe.device
    optimizer = pipe.optimizer(lambda params: make_optimizer(params, config))  # sharded where the plan says
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if config.timeline is not None:
        pipe.timeline = ActionLog(rank=pipe.rank, settle=(lambda: torch.cuda.synchronize(device))
                                  if device.type == "cuda" else None)

    result = TrainResult(rank=pipe.rank, world_size=pipe.world_size, stages=pipe.stages, device=str(device),
                         modules=pipe.modules())
    m, dp = plan.microbatches, pipe.replicas.dp
    reports = pipe.has_last and pipe.replicas.replica == 0  # the global loss, once
    if reports:
        replicas = f" x {dp} data-parallel replicas" if dp > 1 else ""
        stages = f"{plan.num_stages} stage{'s' if plan.num_stages > 1 else ''}"
        log(f"training {spec.name}: {stages}{replicas} on {pipe.world_size} ranks, schedule "
            f"{plan.schedule}, {m} micro-batches, {config.steps} steps, {config.optimizer} lr {config.lr:g}")
        if plan.num_stages > 1:  # [Note: one message per cut]
            log("messages a micro-batch at each cut, forward/back: "
                + ", ".join(f"{f}/{b}" for f, b in messages_per_cut(pipe.prepared.metas)))
        if config.init is not None and config.resume is None:
            said = check_init(spec, config.init)  # the headers only; the ranks have read their tensors
            log(f"weights from {config.init}" + (f" ({said})" if said else ""))
    if config.resume is not None:
        result.start_step = _resume(spec, plan, config, pipe, optimizer, log)
    gc.collect()
    gc.freeze()  # the model, its graph and the optimizer live all run: no collection walks them
    try:
        for step in range(result.start_step, config.steps):
            # this replica's share, and of it what this rank reads ([Note: the batch a rank holds])
            with failures(pipe.where, f"while drawing the batch of step {step + 1}", config.timeout_s):
                inputs, target = pipe.take(*pipe.replicas.share(*spec.batch(m * dp, step)))
            t0, c0 = time.perf_counter(), time.process_time()
            with _traced_on_meta(on_meta and step == result.start_step, device), \
                    failures(pipe.where, f"in step {step + 1}", config.timeout_s):
                pipe.zero_grad(set_to_none=True)
                losses = pipe.step(inputs, target)
                with _span(pipe, "sync"):
                    pipe.sync_tied_grads()
                if optimizer is not None:
                    with _span(pipe, "O"):
                        optimizer.step()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
            dt = time.perf_counter() - t0
            inputs = target = None  # the next batch is drawn after this one is dropped
            result.step_s.append(dt)
            result.step_cpu_s.append(time.process_time() - c0)
            if pipe.has_last:
                with failures(pipe.where, f"while averaging the loss of step {step + 1}", config.timeout_s):
                    loss = pipe.replicas.mean_loss(losses)
            if reports:
                result.losses.append(loss)
                log(f"step {step + 1}/{config.steps}  loss {loss:.6f}  time {dt * 1e3:.1f} ms")
                if not math.isfinite(loss) and all(math.isfinite(x) for x in result.losses[:-1]):
                    # said once, on the first: a run that goes on prints every later loss anyway
                    _stderr(f"the loss of step {step + 1} is {loss}; training goes on, its updates likely "
                            f"{loss} too: try a lower --lr (now {config.lr:g}), or check that step's batch")
            done = step + 1
            if config.save is not None and (done == config.steps or (config.save_every and done % config.save_every == 0)):
                t0 = time.perf_counter()
                path = save_checkpoint(config.save, pipe, optimizer, step=done, extra=_extra(config, plan, spec))
                if reports:
                    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
                    log(f"saved checkpoint {path} ({format_size(size)}, {time.perf_counter() - t0:.2f} s)")
    finally:
        gc.unfreeze()
    result.optimizer_bytes = optimizer_bytes(optimizer)
    result.optimizer_params = (optimizer.owned_names if isinstance(optimizer, ShardedOptimizer) else
                               tuple(n for n, p in pipe.named_parameters() if p.requires_grad) if optimizer else ())
    with failures(pipe.where, "while gathering the summary", config.timeout_s):
        _summary(plan, reports, result, device, log)
        if config.timeline is not None and pipe.timeline is not None:
            _timeline(config.timeline, plan, pipe.timeline, result.world_size, reports, log, device)
    return result


# torch's words for an op its device or dtype has no kernel for
_KERNEL_MISSING = ("NotImplementedError", "not implemented for", "Could not run")


@contextlib.contextmanager
def _traced_on_meta(first: bool, device: torch.device) -> Iterator[None]:
    """A first step that fails in the model's own ops, of a model built on meta: say that its
    graph holds what the model's code chose for the meta device.

    [Note: a graph traced on meta holds the meta branch] Tracing runs the model's Python
    once, on meta tensors, and the graph keeps the ops of each branch it took. Code that
    chooses by the device type takes the branch for no CPU and no GPU, which the device
    that trains may have no kernel for. The one met so far is mended where stages are made
    (transformers' ``grouped_mm`` MoE experts' integer ``torch.histc``: [Note: the meta
    branch's histc] in ``autopipe.runtime.kernels``); for any other, the branch not taken
    was never traced, so the hint names the two ways out.
    """
    try:
        yield
    except RuntimeStageError as e:
        if not first or not any(t in e.message for t in _KERNEL_MISSING):
            raise
        raise RuntimeStageError(
            e.message,
            hint=f"the model was built and traced on the meta device, and code that chooses by "
                 f"the device type keeps the meta choice in the graph, which {device.type} may not "
                 f"run: trace it on "
                 f"the device it trains on (build it on {device.type}, without device=meta), or "
                 f"take the choice away (MoE: config._experts_implementation = 'batched_mm')"
                 + (f"; {e.hint}" if e.hint else "")) from e.__cause__


def _span(pipe: Pipe, kind: str) -> contextlib.AbstractContextManager[None]:
    """One timed action of this rank's step, where the run is timed ([Note: a measured timeline])."""
    return pipe.timeline.span(kind) if pipe.timeline is not None else contextlib.nullcontext()


def _timeline(path: str, plan: Plan, mine: ActionLog, world: int, reports: bool,
              log: Callable[[str], None], device: torch.device) -> None:
    """Gather every rank's actions (collective); the reporting rank writes the trace and
    prints the comparison with the plan."""
    def gather(obj: Any) -> list[Any]:
        out: list[Any] = [None] * world
        dist.all_gather_object(out, obj)
        return out

    ranks = gathered(mine, gather)
    if not reports:
        return
    write_trace(path, plan, ranks)
    for line in compare(plan, ranks, {r: grid_position(plan, r)[0] for r in ranks}, device=device.type):
        log(line)
    log(f"timeline: {path} (open it in ui.perfetto.dev or chrome://tracing)")


def _extra(config: TrainConfig, plan: Plan, spec: ModelSpec) -> dict[str, Any]:
    """What ``autopipe train`` keeps with a checkpoint: the optimizer, the seed, where the data stand."""
    data: dict[str, Any] = {"microbatches": plan.microbatches, "replicas": plan.replicas}
    size = _microbatch_size(spec)
    if size is not None:
        data["microbatch_size"] = size
    data["next_batch"] = "spec.batch(microbatches * replicas, step)"
    return {"optimizer": config.optimizer, "lr": config.lr, "seed": config.seed, "data": data}


def _microbatch_size(spec: ModelSpec) -> int | None:
    """Samples in one micro-batch (``example_batch``), None where no input has a batch dimension."""
    try:
        return example_batch(spec.example_inputs, spec.example_kwargs)
    except SpecError:
        return None


def _stderr(line: str) -> None:
    print(f"note: {line}", file=sys.stderr, flush=True)


def check_resume(config: TrainConfig, model: nn.Module | None = None,
                 note: Callable[[str], None] | None = None) -> CheckpointInfo:
    """The checkpoint ``config.resume`` continues from, checked as far as its files show.

    Of a directory whose newest checkpoint is damaged or unfinished, the newest whole one
    before it ([Note: resuming past a damaged checkpoint]).

    Args:
        config: the run (``config.resume`` is set).
        model: the unsplit model (``spec.model``, may be on meta): with it, the checkpoint's
            keys and shapes must be the model's.
        note: told which checkpoints were passed over and why, where any were.

    Raises:
        CheckpointError: no complete checkpoint; one trained with another optimizer or seed;
            one that has done ``config.steps`` steps already; a damaged one (a data file
            missing or short); or one of another model (the keys that differ named).
    """
    assert config.resume is not None
    info = read_info(find_resumable(config.resume, note))
    saved = info.extra.get("optimizer")
    if saved is not None and saved != config.optimizer:
        raise CheckpointError(f"checkpoint {info.path} was trained with --optimizer {saved}, not "
                              f"{config.optimizer}", hint=f"resume with --optimizer {saved}")
    seed = info.extra.get("seed", 0)  # saved before --seed existed: the seed was 0
    if seed != config.seed:
        raise CheckpointError(f"checkpoint {info.path} was trained with --seed {seed}, not {config.seed}",
                              hint=f"resume with --seed {seed}: the random ops then draw as straight through")
    if info.step >= config.steps:
        raise CheckpointError(f"checkpoint {info.path} has done {info.step} steps already, --steps is "
                              f"{config.steps}", hint=f"--steps counts from the start: pass more than {info.step}")
    metadata = read_metadata(info.path)
    if model is not None:
        check_model(info.path, info, metadata, model)
    return info


def resume_notes(info: CheckpointInfo, config: TrainConfig, plan: Plan, spec: ModelSpec) -> list[str]:
    """What a resumed run does otherwise than the run that saved ``info``, one line each
    (none where it continues as straight through).

    The learning rate, the micro-batches and their size may change on resume (the run
    is then no longer the run straight through, but it is sound); ``--init`` is not read.
    """
    notes = []
    if config.init is not None:
        notes.append(f"note: --init {config.init} is not read: the weights come from checkpoint {info.path}")
    differ = []
    lr = info.extra.get("lr")
    if isinstance(lr, (int, float)) and lr != config.lr:
        differ.append(f"--lr {config.lr:g} (it had {lr:g})")
    data = info.extra.get("data")
    if isinstance(data, dict) and isinstance(data.get("microbatches"), int):
        was = (data["microbatches"] * int(data.get("replicas", 1)), data.get("microbatch_size"))
        now = (plan.microbatches * plan.replicas, _microbatch_size(spec))
        if was[0] != now[0] or (was[1] is not None and now[1] is not None and was[1] != now[1]):
            differ.append(f"{_batches(*now)} a step (it had {_batches(*was)}: the data may differ "
                          "from a run straight through)")
    if differ:
        notes.append(f"note: this run differs from checkpoint {info.path}: {'; '.join(differ)}")
    return notes


def _batches(m: int, size: Any) -> str:
    return f"{m} micro-batches" + (f" of {size}" if isinstance(size, int) else "")


def _resume(spec: ModelSpec, plan: Plan, config: TrainConfig, pipe: Pipe, optimizer: Stepper | None,
            log: Callable[[str], None]) -> int:
    """Load ``config.resume`` into the pipe and optimizer; the step to continue from."""
    assert config.resume is not None  # checked by train before the rendezvous (check_resume)
    info = load_checkpoint(config.resume, pipe, optimizer)
    if pipe.has_last and pipe.replicas.replica == 0:
        log(f"resumed from {info.path} after step {info.step}")
        for line in resume_notes(info, config, plan, spec):
            log(line)
    return info.step


def _summary(plan: Plan, has_last: bool, result: TrainResult, device: torch.device,
             log: Callable[[str], None]) -> None:
    gathered_: list[Any] = [None] * result.world_size
    mine = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    dist.all_gather_object(gathered_, (mine, result.optimizer_bytes))
    peaks = [g[0] for g in gathered_]
    if mine is not None:
        result.peak_memory = {r: int(v) for r, v in enumerate(peaks) if v is not None}
    if not has_last:
        return
    held = [g[1] for g in gathered_]
    if any(held):
        dp = plan.data_parallel
        how = f", sharded over {dp.degree} replicas" if dp is not None and dp.shard_optimizer and dp.degree > 1 else ""
        log(f"optimizer states per rank{how}: " + ", ".join(f"rank {r} {format_size(b)}" for r, b in enumerate(held)))
    ranks = rank_of_stages(plan)
    total = sum(result.step_s)
    log(f"done: {len(result.step_s)} steps in {total:.3f} s, {result.steps_per_s:.3f} steps/s "
        f"after the first step (first step {result.step_s[0]:.3f} s)")
    log(_against_plan(plan, result, device))
    for r, peak in sorted(result.peak_memory.items()):
        stages = [s for s in range(plan.num_stages) if ranks[s] == grid_position(plan, r)[0]]
        predicted = sum(_predicted_peak(plan, s) for s in stages)
        log(f"  rank {r} (stage {', '.join(map(str, stages))}): peak {format_size(peak)} CUDA memory, "
            f"plan predicted {format_size(predicted)}")


def _against_plan(plan: Plan, result: TrainResult, device: torch.device) -> str:
    """The median step after the first next to the plan's predicted step; their ratio where
    the plan's costs are of this kind of device (measured on a CPU, trained on CPUs; on a
    GPU, on GPUs), else for which device the plan predicted."""
    median = statistics.median(result.step_s[1:] or result.step_s)
    predicted = plan.predicted.iteration_s
    where = str(plan.options.get("profile_device", ""))
    line = f"  median step {format_seconds(median)}; the plan predicted {format_seconds(predicted)}"
    if where.split(":")[0] == device.type and predicted > 0:
        line += f" (measured / predicted {median / predicted:.2f})"
        local, cores = local_world(result.world_size), len(allowed_cpus())
        if device.type == "cpu" and local > cores:
            line += (f"; {local} ranks share {cores} cores here, where the plan priced a core "
                     "for each: run fewer ranks a machine, or on more cores")
        return line
    return line + (f" for {where.removeprefix('estimate:')}, not this {device.type}" if where else "")


def _predicted_peak(plan: Plan, stage: int) -> int:
    peaks = plan.predicted.peak_memory
    return int(peaks[stage]) if stage < len(peaks) else plan.stages[stage].memory.total
