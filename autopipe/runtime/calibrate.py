"""Measure the runtime's fixed costs on this machine, and a model's loss and optimizer share.

``measure_runtime_costs`` starts two gloo ranks (one thread each) that time:

* a ping-pong of a 1-float tensor (latency) and of a 4 MiB one (bandwidth), and
  sums over the two ranks of 4 and 16 MiB (tied and replicated gradients: both ranks
  send at once, and add), see [Note: the all-reduce's price];
* a tiny two-layer model split in two and run by autopipe's runtime
  (``PipelineStage`` + ``Schedule1F1B``): the per-action and per-step
  overhead, see [Note: per-action overhead];
* the optimizer step (with the gradient averaging before it) over many small
  and a few large tensors, solved for a per-tensor and a per-element cost
  (``measure_model_costs`` measures the real step of a model's stages instead).

Each figure but the all-reduce's is the 10th percentile of its repeats: on a shared
machine other processes only ever add time, so a low percentile is the undisturbed cost.

[Note: the all-reduce's price]
A gloo all-reduce between two pinned CPU ranks varies by itself, not only when other
processes run: on a quiet host 4 MiB took a median of 4.3 ms against a 10th percentile
of 2.2, and 16 MiB 12.9 against 10.2. It is also not proportional to its size: 1 MiB
took 0.43 ms at its 10th percentile (2.4 GB/s), 4 MiB and more about 1 ms a MiB at their
medians. Priced at the 10th percentile of 16 MiB, bytes / bandwidth, a BERT stage's
4 MiB tied gradient cost 3.1 ms in the plan and 5.6–6.3 ms in training. So the
all-reduce is timed at 4 and 16 MiB, the sizes of tied embeddings, at the median of 15
each, and priced ``allreduce_latency_s`` + bytes / ``allreduce_bandwidth`` through the
two (a latency of 0 where the line would cross below it).

That was gloo's all-reduce with both ranks arriving at once (after a barrier). Training
arrives staggered, the last stage first, and a two-rank sum is now a swap, faster than
the all-reduce ([Note: a pair's sum is a swap] in ``autopipe.runtime.sum_over``): the
line is timed on what training runs, ``sum_over``, with rank 0 starting
``_ALLREDUCE_STAGGER_S`` after rank 1 and its times kept, on a tensor made anew each
time as a step's gradients are, the median of 21 each.

[Note: per-action overhead]
A rank's thread spends CPU time on each action beyond its stage module: inside
``forward_one_chunk``/``backward_one_chunk`` (argument handling, autograd
setup, output bookkeeping) and around them in the schedule (building, posting
and waiting on the sends and receives, the loss call). On this 2-core machine
the part around the call measured 50–110 µs per action, as much as the part
inside (40–90 µs), so timing the calls alone misses half of it. The tiny model's steps are timed
whole in the thread's CPU time (a rank blocked on a peer uses none), with 2
and with 8 micro-batches. What the calls take beyond the stage module and the
loss stays with its kind (forward or backward); the work around the calls is
fitted as a constant per step (splitting the batch, clearing the stage's
state: 60–150 µs here) plus a part per micro-batch, split evenly over its
forward and backward. Waiting for data is not overhead: the simulator adds
the send latency.

    python -m autopipe.runtime.calibrate -o runtime_costs.json [--optimizer adam]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from autopipe.errors import AutopipeError, RuntimeStageError
from autopipe.schedule.runtime_costs import ModelCosts, RuntimeCosts

if TYPE_CHECKING:
    from autopipe.plan_format import Plan
    from autopipe.profile.profile import Profile
    from autopipe.spec import ModelSpec
    from autopipe.trace import Graph

_WIDTH = 16
_ROWS = 4
_ALLREDUCE_FLOATS = (1 << 20, 1 << 22)
"""4 and 16 MiB: the all-reduce is timed at the sizes of tied embeddings' gradients (a 32k × 128
one is 16 MiB), [Note: the all-reduce's price]."""
_ALLREDUCE_STAGGER_S = 0.005
"""How long after rank 1 rank 0 starts each timed sum: under 1F1B the last stage waits for the
first one's last backward."""
_ROW_FLOATS = 128
"""Width of the rows of the tables the rows line sums (the tied LM's)."""
_ROWS_WRITTEN = 512
"""Rows the embedding's side sends: the tied LM's step, 4 micro-batches of 128 tokens."""
WHOLE_REPEATS = 11


def _model_device(spec: ModelSpec) -> torch.device:
    """Where the spec's model lives (its first parameter or buffer; the CPU if it has none)."""
    for t in (*spec.model.parameters(), *spec.model.buffers()):
        return t.device
    return torch.device("cpu")


def _low(times: list[float]) -> float:
    """The 10th percentile: other processes only ever add time, so this is the undisturbed cost."""
    ordered = sorted(times)
    return ordered[len(ordered) // 10]


def _time(fn: Callable[[], Any], repeats: int, warmup: int = 3,
          clock: Callable[[], float] = time.perf_counter) -> float:
    """``_low`` of ``repeats`` timed calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return _low(times)


def _ping_pong(rank: int, tensor: torch.Tensor, repeats: int) -> float:
    """One-way time of sending ``tensor`` (rank 0 ↔ rank 1), median over round trips."""
    import torch.distributed as dist

    peer = 1 - rank

    def once() -> None:
        if rank == 0:
            dist.send(tensor, peer)
            dist.recv(tensor, peer)
        else:
            dist.recv(tensor, peer)
            dist.send(tensor, peer)

    return _time(once, repeats) / 2


class _Tiny(nn.Module):
    """Two small layers: compute is next to nothing, so a stage's time is its overhead."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(_WIDTH, _WIDTH)
        self.second = nn.Linear(_WIDTH, _WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.second(torch.tanh(self.first(x)))
        return out


def tiny_plan(graph: Graph, microbatches: int) -> Plan:
    """Two stages of a model whose second layer is ``second``, cut before that layer's first node."""
    from autopipe.plan_format import Device, Plan, Predicted, SolverInfo, Stage, StageMemory

    names = [n.name for n in graph.nodes]
    cut = names.index(next(n.name for n in graph.nodes if n.module == "second"))
    memory = StageMemory(params=0, grads=0, optimizer=0, activations=0, buffers=0, total=0)
    stages = tuple(Stage(index=i, device="cpu", nodes=tuple(part), modules=(), forward_s=0.0,
                         backward_s=0.0, memory=memory)
                   for i, part in enumerate((names[:cut], names[cut:])))
    return Plan(graph_fingerprint=graph.fingerprint, schedule="1f1b", microbatches=microbatches,
                devices=(Device(name="cpu", memory=0),) * 2, stages=stages,
                predicted=Predicted(iteration_s=0.0, bubble_fraction=0.0),
                solver=SolverInfo(method="uniform", status="heuristic", objective_s=0.0,
                                  lower_bound_s=0.0, gap=0.0, seconds=0.0))


def tiny_spec(model: nn.Module, rows: int = _ROWS, width: int = _WIDTH) -> ModelSpec:
    """A spec for a model of ``rows`` × ``width`` inputs and outputs, trained to random targets
    by the mean squared error."""
    from autopipe.spec import ModelSpec

    def loss(out: Any, target: torch.Tensor) -> torch.Tensor:
        value: torch.Tensor = (out[0] - target).square().mean()
        return value

    return ModelSpec(model=model, example_inputs=(torch.randn(rows, width),), loss_fn=loss,
                     batch=lambda n, step=0: ((torch.randn(rows * n, width),), torch.randn(rows * n, width)))


def _allreduce_line() -> tuple[float, float]:
    """(latency s, bandwidth bytes/s) of the line through the median times of the runtime's
    sum over two ranks (``sum_over``) of ``_ALLREDUCE_FLOATS``, on rank 0, which arrives
    ``_ALLREDUCE_STAGGER_S`` after rank 1 as a first stage does ([Note: the all-reduce's price])."""
    from autopipe.runtime.sum_over import sum_over

    return _sum_line(lambda grads: sum_over(grads))


def _rows_sum_line() -> tuple[float, float]:
    """The same line for a tied embedding's sum ([Note: a tied embedding's rows] in
    ``autopipe.runtime.sum_over``): rank 0, the late one, holds the embedding's gradient and
    sends ``_ROWS_WRITTEN`` rows of it; rank 1 sends its whole copy."""
    import torch.distributed as dist

    from autopipe.runtime.sum_over import sum_rows_over

    def run(grads: torch.Tensor) -> None:
        table = grads.view(-1, _ROW_FLOATS)
        rows = None
        if dist.get_rank() == 0:
            rows = torch.randperm(table.shape[0])[:_ROWS_WRITTEN].sort().values
        sum_rows_over(table, rows)

    return _sum_line(run)


def _sum_line(run: Callable[[torch.Tensor], None]) -> tuple[float, float]:
    """(latency s, bandwidth bytes/s) through the median times ``run`` takes on rank 0 to sum
    a new tensor of each of ``_ALLREDUCE_FLOATS`` over the two ranks, rank 0 arriving
    ``_ALLREDUCE_STAGGER_S`` late."""
    import torch.distributed as dist

    late = dist.get_rank() == 0
    busy = torch.randn(64, 64)
    points = []
    for floats in _ALLREDUCE_FLOATS:
        times = []
        for i in range(24):
            grads = torch.randn(floats)  # a new gradient each step, as training's
            dist.barrier()
            end = time.perf_counter() + (_ALLREDUCE_STAGGER_S if late else 0.0)
            while time.perf_counter() < end:  # computing, as the first stage's last backward
                busy @ busy
            t0 = time.perf_counter()
            run(grads)
            if i >= 3:
                times.append(time.perf_counter() - t0)
        points.append((float(floats * grads.element_size()), statistics.median(times)))
    return _line(points[0], points[1])


def _line(small: tuple[float, float], large: tuple[float, float]) -> tuple[float, float]:
    """(latency s, bandwidth bytes/s) of the line through two (bytes, seconds) points; where
    noise tilts it below the origin or flat, the larger point's bandwidth and no latency."""
    (b1, t1), (b2, t2) = small, large
    per_byte = (t2 - t1) / (b2 - b1)
    if per_byte <= 0 or t1 - per_byte * b1 < 0:
        return 0.0, b2 / max(t2, 1e-9)
    return t1 - per_byte * b1, 1.0 / per_byte


def _stage_overheads(rank: int, microbatches: tuple[int, int] = (2, 8),
                     steps: int = 20) -> tuple[float, float, float]:
    """Per-action (forward, backward) and per-step overhead of autopipe's runtime under 1F1B, CPU seconds.

    The tiny model runs through the same split, ``PipelineStage`` construction and
    schedule as ``autopipe train``. An action's overhead is everything its rank's
    thread computes for it besides the stage module: inside
    ``forward_one_chunk``/``backward_one_chunk`` (argument handling, autograd
    setup) and, around them, what the schedule does per action (building and
    posting the sends and receives, waiting on them, the loss call). The step's
    own work (splitting the batch into micro-batches, clearing the stage's state)
    is paid once per step whatever the micro-batch count: the steps run at two
    counts, and the work around the calls is fitted as a per-step constant plus
    a per-micro-batch part. See [Note: per-action overhead].
    """
    from autopipe.runtime.prepare import prepare
    from autopipe.runtime.stage import build_pipeline
    from autopipe.trace import trace

    torch.manual_seed(0)
    spec = tiny_spec(_Tiny())
    example, loss = spec.example_inputs[0], spec.loss_fn
    graph = trace(spec.model, (example,))
    clock = time.thread_time
    module = None
    # per count: each step's (work around the calls, inside F per micro-batch, inside B per micro-batch)
    runs: list[list[tuple[float, float, float]]] = []
    for m in microbatches:
        plan = tiny_plan(graph, m)
        prep = prepare(spec, plan, 2, graph)
        pipe = build_pipeline(prep.split, prep.metas, plan, rank, torch.device("cpu"), loss)
        module = prep.split.stages[rank].module
        inner = _time_calls(pipe.stages[0], clock)
        (batch,), target = spec.batch(m)
        timings = []
        for step in range(steps):
            inner["F"] = inner["B"] = 0.0
            t0 = clock()
            if pipe.has_first:
                pipe.schedule.step(batch)
            else:
                pipe.schedule.step(target=target)
            if step >= 2:  # the first steps allocate buffers
                t, f, b = clock() - t0, inner["F"], inner["B"]
                timings.append((t - f - b, f / m, b / m))
        runs.append(timings)
    assert module is not None
    x = torch.randn(prep.metas[rank].inputs[0].shape).requires_grad_(rank > 0)
    bare_f = _time(lambda: module(x), 50, clock=clock)
    bare_b = _time(lambda: torch.autograd.backward(module(x)[0].sum()), 50, clock=clock) - bare_f
    loss_f = loss_b = 0.0
    if pipe.has_last:  # the schedule calls the loss after each forward; its backward is in B's
        out = (module(x)[0].detach().requires_grad_(),)
        loss_f = _time(lambda: loss(out, target[:_ROWS]), 50, clock=clock)
        loss_b = _time(lambda: torch.autograd.backward(loss(out, target[:_ROWS])), 50, clock=clock) - loss_f
    (m1, m2), (few, many) = microbatches, runs
    around1 = _low([r - m1 * loss_f for r, _, _ in few])
    around2 = _low([r - m2 * loss_f for r, _, _ in many])
    per_mb = max(0.0, (around2 - around1) / (m2 - m1))  # around one forward and one backward
    per_step = max(0.0, around1 - m1 * per_mb)
    inside_f = _low([f for _, f, _ in few + many]) - bare_f
    inside_b = _low([b for _, _, b in few + many]) - bare_b - loss_b
    return max(0.0, inside_f + per_mb / 2), max(0.0, inside_b + per_mb / 2), per_step


def _time_calls(stage: Any, clock: Callable[[], float]) -> dict[str, float]:
    """Wrap the stage's forward and backward calls to add their ``clock`` time to the returned totals."""
    inner: dict[str, float] = {"F": 0.0, "B": 0.0}

    def timed(fn: Callable[..., Any], key: str) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                inner[key] += clock() - t0
        return wrapper

    stage.forward_one_chunk = timed(stage.forward_one_chunk, "F")
    stage.backward_one_chunk = timed(stage.backward_one_chunk, "B")
    return inner


def _worker(out: str, optimizer: str) -> int:
    """One rank of the calibration job (run under the launcher)."""
    import torch.distributed as dist

    from autopipe._malloc import pin_malloc
    from autopipe.runtime.affinity import pin_cores

    pin_malloc()  # as ``autopipe train`` does on CPU
    pin_cores(int(os.environ["LOCAL_RANK"]), int(os.environ["LOCAL_WORLD_SIZE"]))  # likewise
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    try:
        latency = _ping_pong(rank, torch.zeros(1), 200)
        big = torch.zeros(1 << 20)
        bandwidth = big.numel() * big.element_size() / max(_ping_pong(rank, big, 20) - latency, 1e-9)
        allreduce_latency, allreduce_bw = _allreduce_line()
        rows_latency, rows_bw = _rows_sum_line()
        forward, backward, per_step = _stage_overheads(rank)
        dist.barrier()
        from autopipe.profile.optimizer import measure_rates

        per_tensor, per_element = measure_rates(torch.device("cpu"), torch.float32, names=(optimizer,))[optimizer]
        gathered: list[Any] = [None, None]
        dist.all_gather_object(gathered, [forward, backward, per_tensor, per_element, per_step])
        gc.collect()  # the pipeline's stages and pending work go before the group does
        dist.barrier()
    finally:
        dist.destroy_process_group()
    if rank == 0:
        mean = [statistics.fmean(v) for v in zip(*gathered)]
        costs = RuntimeCosts(forward_overhead_s=mean[0], backward_overhead_s=mean[1], step_overhead_s=mean[4],
                             send_latency_s=latency, link_bandwidth=bandwidth,
                             allreduce_bandwidth=allreduce_bw, allreduce_latency_s=allreduce_latency,
                             rows_sum_bandwidth=rows_bw, rows_sum_latency_s=rows_latency,
                             optimizer=optimizer,
                             optimizer_tensor_s=mean[2], optimizer_element_s=mean[3],
                             device="cpu", backend="gloo", threads=1)
        costs.save(out)
    return 0


def measure_runtime_costs(optimizer: str = "adam", timeout_s: float = 300.0) -> RuntimeCosts:
    """Measure this machine's ``RuntimeCosts`` with two gloo ranks on CPU (takes ~10 s).

    Raises:
        RuntimeStageError: a calibration rank failed.
    """
    from autopipe.runtime.launch import launch

    with tempfile.TemporaryDirectory(prefix="autopipe-calibrate.") as d:
        out = Path(d, "costs.json")
        cmd = [sys.executable, "-m", "autopipe.runtime.calibrate", "--worker", str(out), optimizer]
        result = launch(cmd, 2, env={"OMP_NUM_THREADS": "1"}, timeout_s=timeout_s)
        if result.code or not out.exists():
            raise RuntimeStageError(f"runtime calibration failed (exit codes {list(result.codes)})",
                                    hint="the ranks' messages above say why")
        return RuntimeCosts.load(out)


PLANNED = ("forward_overhead_s", "backward_overhead_s", "send_latency_s", "step_overhead_s",
           "link_bandwidth", "allreduce_bandwidth", "allreduce_latency_s", "rows_sum_bandwidth",
           "rows_sum_latency_s")
"""The RuntimeCosts fields a profile carries for the planner (``Profile.runtime``)."""


def profile_runtime(profile: Profile, optimizer: str = "adam") -> Profile:
    """``profile`` with the runtime's fixed costs measured here (``measure_runtime_costs``),
    where it was measured on this machine's CPU: the planner then prices every action,
    send and step with them. Other profiles come back as they are (the calibration runs
    CPU ranks over gloo).

    The ``optimizer``'s rates come from the calibration too, for fp32 profiles: its
    ranks step at the same time, as training's ranks do at the end of a step, and
    share the memory bandwidth an optimizer step is bound by (the profile's own rates
    are of one process alone).
    """
    return runtime_profiler(optimizer)(profile)


def runtime_profiler(optimizer: str = "adam") -> Callable[[Profile], Profile]:
    """``profile_runtime`` for the profiles of one model at several micro-batch sizes (a
    batch-size search): the runtime's costs, which no model shapes, measured once, for the
    first profile that takes them (each size measured them again until 2026-12-06: 7 s a
    size on this 2-core machine)."""
    import dataclasses

    measured: list[RuntimeCosts] = []

    def with_costs(profile: Profile) -> Profile:
        if profile.method != "measure" or profile.device != "cpu":
            return profile
        if not measured:
            measured.append(measure_runtime_costs(optimizer))
        costs = measured[0]
        rates = dict(profile.optimizer)
        if profile.dtype == "float32":
            rates[optimizer] = (costs.optimizer_tensor_s, costs.optimizer_element_s)
        return dataclasses.replace(profile, runtime={k: float(getattr(costs, k)) for k in PLANNED},
                                   optimizer=rates)

    return with_costs


def _as_leaves(value: Any) -> Any:
    """The same structure with every float tensor a fresh leaf that requires grad."""
    if isinstance(value, torch.Tensor):
        leaf = value.detach().clone()
        return leaf.requires_grad_(True) if leaf.is_floating_point() else leaf
    if isinstance(value, dict):
        return {k: _as_leaves(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_as_leaves(v) for v in value)
    if isinstance(value, list):
        return [_as_leaves(v) for v in value]
    return value


def measure_loss_s(spec: ModelSpec, repeats: int = 5) -> tuple[float, float]:
    """(forward, backward) seconds of ``spec.loss_fn`` on one micro-batch's output."""
    inputs, target = spec.batch(1)
    with torch.no_grad():
        output = spec.model(*inputs, **spec.example_kwargs)

    def forward() -> torch.Tensor:
        loss: torch.Tensor = spec.loss_fn(_as_leaves(output), target)
        return loss

    def both() -> None:
        torch.autograd.backward(forward())

    from autopipe.runtime.timing import stage_clock

    clock = stage_clock(_model_device(spec))
    f = _time(forward, repeats, warmup=1, clock=clock)
    fb = _time(both, repeats, warmup=1, clock=clock)
    return f, max(0.0, fb - f)


def compute_scale(profile: Profile, whole_s: float | None = None) -> float:
    """Whole-model forward+backward over the sum of the profile's nodes' (1.0 if unknown).

    Args:
        profile: the profile the plan was made from.
        whole_s: a whole-model forward+backward time; default the one the profile recorded.
    """
    if whole_s is None:
        recorded = profile.meta.get("whole_model", {}).get("forward_backward_s")
        whole_s = float(recorded) if isinstance(recorded, (int, float)) else None
    nodes = profile.forward_s + profile.backward_s
    if whole_s is None or whole_s <= 0 or nodes <= 0:
        return 1.0
    return whole_s / nodes


# [Note: compute after a wait]
# A pipeline rank blocks on its peer before most actions (gloo's wait sleeps), and
# on this 2-core VM the work right after a block runs slower than the same work
# repeated back to back: its caches have gone cold. In thread CPU time, the MLP
# example's first stage forward took 0.19-0.28 ms back to back, 0.33-0.36 ms after a
# 0.2 ms sleep and 0.62 ms after a 1 ms one. Timing each stage action and optimizer
# step after blocking 60 µs (the send latency) raised the MLP's simulated step from
# 6.0-6.2 ms to 6.4-7.5 ms (three alternating measurements each); the U-Net's
# stages, ten times longer, moved less than the noise. So ``measure_model_costs``
# can time each action after blocking the calibrated send latency: the least a rank
# waits for its peer.
def _block(seconds: float) -> None:
    """Block the thread (as a rank waiting on its peer does) for ``seconds``; 0: not at all."""
    if seconds > 0:
        time.sleep(seconds)


def measure_stage_compute(spec: ModelSpec, graph: Graph, plan: Plan, repeats: int = WHOLE_REPEATS,
                          idle_s: float = 0.0) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Each stage's forward and backward, timed as the one module the runtime runs.

    The stages are the runtime's split of ``graph``, timed by
    ``autopipe.runtime.timing.time_stages`` on the spec's example micro-batch (see
    there; ``idle_s`` as in [Note: compute after a wait]).

    Returns:
        (forward seconds per stage, backward seconds per stage).
    """
    from autopipe.runtime.placement import num_ranks
    from autopipe.runtime.prepare import prepare
    from autopipe.runtime.timing import time_stages

    prep = prepare(spec, plan, num_ranks(plan), graph)
    flat = graph.flat_inputs(spec.example_inputs, spec.example_kwargs)
    values = [v for v in flat if isinstance(v, torch.Tensor)]
    times = time_stages(prep.split, values, repeats=repeats, idle_s=idle_s)
    return times.forward_s, times.backward_s


def measure_optimizer_s(spec: ModelSpec, graph: Graph, plan: Plan, optimizer: str = "adam",
                        repeats: int = WHOLE_REPEATS, idle_s: float = 0.0) -> tuple[float, ...]:
    """Per stage, the step the runtime takes once per step on the stage's parameters.

    That is ``zero_grad(set_to_none=True)``, each gradient divided by the
    micro-batch count, and ``optimizer.step()``, on copies of the parameters the
    stage's module holds (tied ones in every holder) with random gradients. Timed
    like ``measure_stage_compute`` (blocking ``idle_s`` before each step); medians of
    ``repeats`` after two warm-ups (the first step creates the optimizer's state).
    """
    from autopipe.runtime.optim import TrainConfig, make_optimizer
    from autopipe.runtime.placement import num_ranks
    from autopipe.runtime.prepare import prepare
    from autopipe.runtime.tied import canonical_names, stage_params
    from autopipe.runtime.timing import stage_clock

    prep = prepare(spec, plan, num_ranks(plan), graph)
    canonical = canonical_names(graph)
    clock = stage_clock(_model_device(spec))
    config = TrainConfig(steps=1, optimizer=optimizer)
    out: list[float] = []
    for st in prep.split.stages:
        params = [nn.Parameter(p.detach().clone()) for p in stage_params(st.module, canonical).values()
                  if p.requires_grad]
        grads = [torch.randn_like(p) for p in params]
        opt = make_optimizer(params, config)
        if opt is None:
            out.append(0.0)
            continue
        times = []
        for i in range(2 + repeats):
            _block(idle_s)
            t0 = clock()
            opt.zero_grad(set_to_none=True)
            t1 = clock()
            for p, g in zip(params, grads):
                p.grad = g  # what the backward leaves; not timed
            t2 = clock()
            for p in params:
                assert p.grad is not None
                p.grad.div_(plan.microbatches)
            opt.step()
            if i >= 2:
                times.append((t1 - t0) + (clock() - t2))
        out.append(statistics.median(times))
    return tuple(out)


def measure_model_costs(spec: ModelSpec, graph: Graph, plan: Plan,
                        profile: Profile | None = None, *, optimizer: str = "adam",
                        idle_s: float = 0.0) -> ModelCosts:
    """The loss's time, each stage's parameters (tensors, elements, tied bytes), each
    stage's compute re-timed as one module (``measure_stage_compute``) and its
    ``optimizer`` step (``measure_optimizer_s``) for ``plan``.

    With the ``profile`` the plan was made from, ``compute_scale`` is also set: a
    whole-model measurement (median of ``WHOLE_REPEATS`` forward+backward runs
    timed as the profiler times) over the sum of the profile's nodes. ``idle_s``
    (e.g. the calibrated ``RuntimeCosts.send_latency_s``) is how long the thread
    blocks before each timed stage action and optimizer step ([Note: compute after a wait]).
    """
    from autopipe.runtime.placement import schedule_kind
    from autopipe.trace.graph import tied_embeddings

    owner: dict[str, set[int]] = {}
    stage_of = plan.stage_of
    for info in graph.nodes:
        if info.name in stage_of:
            for name in (*info.params, *info.shared_params):
                owner.setdefault(name, set()).add(stage_of[info.name])
    params = dict(spec.model.named_parameters(remove_duplicate=False))
    tensors = [0] * plan.num_stages
    elements = [0] * plan.num_stages
    tied = [0] * plan.num_stages
    rows = [0] * plan.num_stages
    by_rows = _model_device(spec).type == "cpu" and not schedule_kind(plan.schedule).splits_backward
    # [Note: a tied embedding's rows] in autopipe.runtime.sum_over
    embeddings = tied_embeddings(graph.nodes, lambda n: n.embedding) if by_rows else frozenset()
    for name, stages in owner.items():
        p = params.get(name)
        if p is None or not p.requires_grad:
            continue
        embedding = name in embeddings and len(stages) == 2 and p.dtype == torch.float32
        for s in stages:
            tensors[s] += 1
            elements[s] += p.numel()
            if len(stages) > 1:
                tied[s] += p.numel() * p.element_size()
                rows[s] += p.numel() * p.element_size() if embedding else 0
    loss_f, loss_b = measure_loss_s(spec)
    scale = 1.0
    if profile is not None:
        from autopipe.profile.whole import measure_whole

        device = _model_device(spec)
        whole = measure_whole(graph, spec.example_inputs, spec.example_kwargs, repeats=WHOLE_REPEATS,
                              device=str(device))
        scale = compute_scale(profile, whole.forward_backward_s)
    stage_f, stage_b = measure_stage_compute(spec, graph, plan, idle_s=idle_s)
    return ModelCosts(loss_forward_s=loss_f, loss_backward_s=loss_b,
                      stage_param_tensors=tuple(tensors), stage_param_elements=tuple(elements),
                      stage_tied_bytes=tuple(tied), stage_tied_rows_bytes=tuple(rows), compute_scale=scale,
                      stage_forward_s=stage_f, stage_backward_s=stage_b,
                      stage_optimizer_s=measure_optimizer_s(spec, graph, plan, optimizer, idle_s=idle_s))


def main(argv: list[str] | None = None) -> int:
    """``python -m autopipe.runtime.calibrate -o FILE.json``: measure and save RuntimeCosts."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return _worker(argv[1], argv[2])
    ap = argparse.ArgumentParser(prog="python -m autopipe.runtime.calibrate",
                                 description="Measure the pipeline runtime's fixed costs on this machine.")
    ap.add_argument("-o", "--output", required=True, metavar="FILE.json")
    ap.add_argument("--optimizer", default="adam", help="adam (default), adamw, sgd, sgd-momentum")
    args = ap.parse_args(argv)
    try:
        costs = measure_runtime_costs(args.optimizer)
    except AutopipeError as e:
        print(f"calibrate: error: {e.message}", file=sys.stderr)
        return 2
    costs.save(args.output)
    print(json.dumps(asdict(costs), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
