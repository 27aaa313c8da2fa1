"""Measure the runtime's fixed costs on this machine, and a model's loss and optimizer share.

``measure_runtime_costs`` starts two gloo ranks (one thread each) that time:

* a ping-pong of a 1-float tensor (latency) and of a 4 MiB one (bandwidth);
* a two-stage ``PipelineStage`` + ``Schedule1F1B`` over a tiny ``Linear``:
  the time of each ``forward_one_chunk``/``backward_one_chunk`` minus the
  module's own forward/backward is the stage's per-action overhead;
* the optimizer step (with the gradient averaging before it) over many small
  and a few large tensors, solved for a per-tensor and a per-element cost.

Each figure is the 10th percentile of its repeats: on a shared machine other
processes only ever add time, so a low percentile is the undisturbed cost.

    python -m autopipe.schedule.calibrate -o runtime_costs.json [--optimizer adam]
"""

from __future__ import annotations

import argparse
import json
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


def _low(times: list[float]) -> float:
    """The 10th percentile: other processes only ever add time, so this is the undisturbed cost."""
    ordered = sorted(times)
    return ordered[len(ordered) // 10]


def _time(fn: Callable[[], Any], repeats: int, warmup: int = 3) -> float:
    """``_low`` of ``repeats`` timed calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
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


def _optimizer_step_s(optimizer: str, shapes: list[int], repeats: int) -> float:
    """Seconds of one gradient averaging + optimizer step over parameters of these sizes."""
    from autopipe.runtime.optim import TrainConfig, make_optimizer

    params = [nn.Parameter(torch.randn(n)) for n in shapes]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = make_optimizer(params, TrainConfig(steps=1, optimizer=optimizer))
    assert opt is not None

    def step() -> None:
        for p in params:
            assert p.grad is not None
            p.grad.div_(2.0)
        opt.step()

    return _time(step, repeats)


def _optimizer_costs(optimizer: str) -> tuple[float, float]:
    """(per tensor, per element) seconds, from many small tensors and a few big ones."""
    small, big = [256] * 256, [1 << 20] * 4
    t_small = _optimizer_step_s(optimizer, small, 15)
    t_big = _optimizer_step_s(optimizer, big, 7)
    # t = a·tensors + b·elements, two equations
    n1, e1, n2, e2 = len(small), sum(small), len(big), sum(big)
    b = max(0.0, (t_big * n1 - t_small * n2) / (e2 * n1 - e1 * n2))
    a = max(0.0, (t_small - b * e1) / n1)
    return a, b


def _stage_overheads(rank: int, microbatches: int, steps: int) -> tuple[float, float]:
    """Per-action (forward, backward) overhead of a PipelineStage under Schedule1F1B."""
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B

    torch.manual_seed(rank)
    module = nn.Linear(_WIDTH, _WIDTH)
    example = torch.randn(_ROWS, _WIDTH)
    sent = example.clone().requires_grad_(True)  # what crosses the cut carries a gradient back
    stage = PipelineStage(module, rank, 2, torch.device("cpu"),
                          input_args=(example if rank == 0 else sent,), output_args=(sent,))
    schedule = Schedule1F1B(stage, microbatches, loss_fn=lambda out, target: (out - target).square().mean())
    times: dict[str, list[float]] = {"F": [], "B": []}

    def timed(fn: Callable[..., Any], key: str) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                times[key].append(time.perf_counter() - t0)
        return wrapper

    stage.forward_one_chunk = timed(stage.forward_one_chunk, "F")  # type: ignore[method-assign]
    stage.backward_one_chunk = timed(stage.backward_one_chunk, "B")  # type: ignore[method-assign]
    batch = torch.randn(_ROWS * microbatches, _WIDTH)
    for step in range(steps):
        if step == 2:  # the first steps allocate buffers
            times = {"F": [], "B": []}
        if rank == 0:
            schedule.step(batch)
        else:
            schedule.step(target=batch)
    x = example.clone().requires_grad_(True)
    bare_f = _time(lambda: module(x), 50)
    bare_fb = _time(lambda: module(x).sum().backward(), 50)
    return (max(0.0, _low(times["F"]) - bare_f),
            max(0.0, _low(times["B"]) - (bare_fb - bare_f)))


def _worker(out: str, optimizer: str) -> int:
    """One rank of the calibration job (run under the launcher)."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    try:
        latency = _ping_pong(rank, torch.zeros(1), 200)
        big = torch.zeros(1 << 20)
        bandwidth = big.numel() * big.element_size() / max(_ping_pong(rank, big, 20) - latency, 1e-9)
        forward, backward = _stage_overheads(rank, microbatches=8, steps=20)
        dist.barrier()
        per_tensor, per_element = _optimizer_costs(optimizer)
        gathered: list[Any] = [None, None]
        dist.all_gather_object(gathered, [forward, backward, per_tensor, per_element])
    finally:
        dist.destroy_process_group()
    if rank == 0:
        mean = [statistics.fmean(v) for v in zip(*gathered)]
        costs = RuntimeCosts(forward_overhead_s=mean[0], backward_overhead_s=mean[1],
                             send_latency_s=latency, link_bandwidth=bandwidth, optimizer=optimizer,
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
        cmd = [sys.executable, "-m", "autopipe.schedule.calibrate", "--worker", str(out), optimizer]
        result = launch(cmd, 2, env={"OMP_NUM_THREADS": "1"}, timeout_s=timeout_s)
        if result.code or not out.exists():
            raise RuntimeStageError(f"runtime calibration failed (exit codes {list(result.codes)})",
                                    hint="the ranks' messages above say why")
        return RuntimeCosts.load(out)


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

    f = _time(forward, repeats, warmup=1)
    fb = _time(both, repeats, warmup=1)
    return f, max(0.0, fb - f)


def compute_scale(profile: Profile) -> float:
    """The profile's whole-model forward+backward over the sum of its nodes' (1.0 if not recorded)."""
    whole = profile.meta.get("whole_model", {}).get("forward_backward_s")
    nodes = profile.forward_s + profile.backward_s
    if not isinstance(whole, (int, float)) or whole <= 0 or nodes <= 0:
        return 1.0
    return float(whole) / nodes


def measure_model_costs(spec: ModelSpec, graph: Graph, plan: Plan,
                        profile: Profile | None = None) -> ModelCosts:
    """The loss's time and each stage's parameters (tensors, elements, tied bytes) for ``plan``.

    With the ``profile`` the plan was made from, stage times are also scaled to its
    whole-model measurement (``compute_scale``).
    """
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
    for name, stages in owner.items():
        p = params.get(name)
        if p is None or not p.requires_grad:
            continue
        for s in stages:
            tensors[s] += 1
            elements[s] += p.numel()
            if len(stages) > 1:
                tied[s] += p.numel() * p.element_size()
    loss_f, loss_b = measure_loss_s(spec)
    return ModelCosts(loss_forward_s=loss_f, loss_backward_s=loss_b,
                      stage_param_tensors=tuple(tensors), stage_param_elements=tuple(elements),
                      stage_tied_bytes=tuple(tied),
                      compute_scale=compute_scale(profile) if profile is not None else 1.0)


def main(argv: list[str] | None = None) -> int:
    """``python -m autopipe.schedule.calibrate -o FILE.json``: measure and save RuntimeCosts."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return _worker(argv[1], argv[2])
    ap = argparse.ArgumentParser(prog="python -m autopipe.schedule.calibrate",
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
