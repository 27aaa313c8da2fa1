"""Tests for autopipe/profile/loss.py: the loss profiled on its own and charged to the last stage."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import autopipe
from autopipe.cli.main import main
from autopipe.errors import InfeasiblePlanError, ProfileError, SpecError
from autopipe.partition.costs import MEMORY_HEADROOM
from autopipe.partition.planner import plan_profile
from autopipe.plan_format import Plan
from autopipe.profile import Profile, estimate, measure
from autopipe.profile._peak import PeakBytes
from autopipe.profile.gradients import gradients_around
from autopipe.spec import example_target

from .conftest import EXAMPLES, example_spec
from .runtime_cases import TINY


def test_a_32k_head_makes_the_loss_cost_more_than_a_block(tmp_path: Path) -> None:
    spec = example_spec("tied_lm", layers=2)
    graph = autopipe.trace(spec.model, spec.example_inputs)
    p = measure(graph, spec.example_inputs, loss_fn=spec.loss_fn, target=example_target(spec),
                warmup=1, repeats=3, progress=False)
    assert p.loss is not None
    loss = p.loss.forward_s + p.loss.backward_s
    blocks = [n.forward_s + n.backward_s for n in p.nodes if n.module.startswith("blocks.")]
    assert loss > 0 and loss > max(blocks)
    assert p.loss.input_bytes == 2 * 64 * 32768 * 4  # the logits it reads
    assert p.loss.activation_bytes >= p.loss.input_bytes  # cross-entropy keeps its softmax
    assert p.loss.target_bytes == example_target(spec).nbytes == 2 * 64 * 8  # int64 token ids
    p.save(tmp_path / "p.json")
    assert Profile.load(tmp_path / "p.json").loss == p.loss
    e = estimate(graph, spec.example_inputs, loss_fn=spec.loss_fn, target=example_target(spec),
                 progress=False)
    assert e.loss is not None and e.loss.forward_s > 0 and e.loss.backward_s > 0
    assert e.loss.activation_bytes == p.loss.activation_bytes
    assert e.loss.target_bytes == p.loss.target_bytes
    # its peak: the softmax it saves, the gradient of it and of the logits (one each), the
    # same counted on the CPU and on meta tensors
    assert 3 * p.loss.input_bytes <= p.loss.peak_bytes < 3 * p.loss.input_bytes + 2**20
    assert e.loss.peak_bytes == p.loss.peak_bytes
    assert p.loss.workspace_bytes == p.loss.input_bytes + p.loss.peak_bytes - p.loss.activation_bytes


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_peak_bytes_counts_what_is_made_until_it_is_freed(device: str) -> None:
    logits = torch.randn(128, 4096, device=device, requires_grad=True)
    target = torch.zeros(128, dtype=torch.long, device=device)
    size = logits.numel() * 4
    with PeakBytes(exclude=[logits, target]) as peak:
        loss = F.cross_entropy(logits.detach().requires_grad_(), target)  # a view of an input: not counted
        assert size <= peak.live < size + 1024  # the saved log-softmax
        loss.backward()
        del loss  # frees the log-softmax
    assert 3 * size <= peak.peak < 3 * size + 1024  # log-softmax, its gradient, the logits'
    assert peak.live == 0  # the leaf's gradient went with the leaf


def test_the_last_stage_holds_the_loss_workspace() -> None:
    """Its input and its peak beyond what it saves, alongside its saved activations; a
    memory limit that only the workspace breaks refuses the plan."""
    spec = example_spec("tied_lm", layers=2)
    graph = autopipe.trace(spec.model, spec.example_inputs)
    p = estimate(graph, spec.example_inputs, loss_fn=spec.loss_fn, target=example_target(spec),
                 progress=False)
    assert p.loss is not None and p.loss.workspace_bytes > p.loss.input_bytes
    unknown = dataclasses.replace(p, loss=dataclasses.replace(p.loss, peak_bytes=0))
    plan = plan_profile(p, num_stages=2, microbatches=4, optimizer="sgd")
    before = plan_profile(unknown, num_stages=2, microbatches=4, optimizer="sgd")
    assert plan.stage_of == before.stage_of
    last, was = plan.stages[-1].memory, before.stages[-1].memory
    # without the loss's, the stage holds its largest call's gradients (the head's: its
    # logits' and its weight's), less than the loss's workspace
    around = gradients_around(p)
    grads = max(around[n] for n in plan.stages[-1].nodes)
    assert (last.workspace, was.workspace) == (p.loss.workspace_bytes, grads)
    extra = p.loss.workspace_bytes - grads
    assert extra > 0
    assert last.total == was.total + extra
    assert plan.predicted.peak_memory[-1] == before.predicted.peak_memory[-1] + extra
    assert plan.stages[0].memory == before.stages[0].memory
    assert Plan.from_json(plan.to_json()).stages[-1].memory.workspace == p.loss.workspace_bytes
    # every device at the last stage's memory without the loss's workspace: that plan fits,
    # and with it no split does (the head's weight and gradient and the workspace alone are over)
    limit = int(was.total / (1 - MEMORY_HEADROOM)) + 1
    assert was.total + extra > limit * (1 - MEMORY_HEADROOM)
    plan_profile(unknown, num_stages=2, microbatches=4, optimizer="sgd", memory_limit=limit)
    with pytest.raises(InfeasiblePlanError):
        plan_profile(p, num_stages=2, microbatches=4, optimizer="sgd", memory_limit=limit)


@pytest.mark.parametrize("name", EXAMPLES)
def test_the_loss_lands_on_the_last_stage(name: str) -> None:
    spec = example_spec(name, **TINY[name])
    graph = autopipe.trace(spec.model, spec.example_inputs, spec.example_kwargs)
    p = estimate(graph, spec.example_inputs, spec.example_kwargs, loss_fn=spec.loss_fn,
                 target=example_target(spec), progress=False)
    assert p.loss is not None and p.loss.forward_s > 0
    without = plan_profile(dataclasses.replace(p, loss=None), num_stages=2, microbatches=4)
    plan = plan_profile(p, num_stages=2, microbatches=4)
    if plan.stage_of == without.stage_of:  # the same cuts: the last stage carries exactly the loss
        assert plan.stages[-1].forward_s == pytest.approx(without.stages[-1].forward_s + p.loss.forward_s)
        assert plan.stages[-1].backward_s == pytest.approx(without.stages[-1].backward_s + p.loss.backward_s)
        assert plan.stages[0].forward_s == pytest.approx(without.stages[0].forward_s)
    assert plan.predicted.iteration_s > without.predicted.iteration_s


@pytest.mark.parametrize("method", ["ilp", "dp"])
def test_a_loss_heavier_than_the_model_runs_alone_on_the_last_stage(method: str) -> None:
    """The loss computes: a last stage may hold it alone (the model's output and nothing
    else), for every method that searches; a model without a loss has no such stage."""
    spec = example_spec("mlp", **TINY["mlp"])
    graph = autopipe.trace(spec.model, spec.example_inputs)
    p = estimate(graph, spec.example_inputs, loss_fn=spec.loss_fn, target=example_target(spec),
                 progress=False)
    assert p.loss is not None
    work = sum(n.forward_s + n.backward_s for n in p.nodes)
    heavy = dataclasses.replace(p, loss=dataclasses.replace(p.loss, forward_s=work, backward_s=work))
    plan = plan_profile(heavy, num_stages=2, microbatches=4, method=method)
    assert plan.stages[-1].nodes == ("output",)
    assert plan.stages[-1].forward_s == pytest.approx(work)
    without = plan_profile(dataclasses.replace(p, loss=None), num_stages=2, microbatches=4, method=method)
    assert len(without.stages[-1].nodes) > 1


def _per_sample(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, t, reduction="none")


def _a_float(out: torch.Tensor, t: torch.Tensor) -> float:
    return float(F.cross_entropy(out, t).detach())


def _a_constant(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.tensor(1.0, requires_grad=True)


def _made_on_the_cpu(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, t) + (out * torch.ones(out.shape)).mean()


def _wrong_output_type(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out.logits, t)


@pytest.mark.parametrize(("loss_fn", "mode", "error", "message"), [
    (_per_sample, "measure", SpecError, "loss_fn returned a tensor of shape (4,), not a scalar"),
    (_per_sample, "estimate", SpecError, "loss_fn returned a tensor of shape (4,), not a scalar"),
    (_a_float, "measure", SpecError, "loss_fn returned a float"),
    # float() on meta, then again on CPU stand-ins ([Note: a loss that reads values, estimated])
    (_a_float, "estimate", SpecError, "loss_fn returned a float"),
    (_a_constant, "measure", SpecError, "a tensor that does not depend on the model's output"),
    (_a_constant, "estimate", SpecError, "a tensor that does not depend on the model's output"),
    (_made_on_the_cpu, "measure", None, ""),
    (_made_on_the_cpu, "estimate", ProfileError, "on device cpu is not on the expected device meta"),
    (_wrong_output_type, "measure", ProfileError, "(cpu tensors): AttributeError"),
    (_wrong_output_type, "estimate", ProfileError, "(meta tensors): AttributeError"),
])
def test_a_loss_fn_that_fails_or_is_no_scalar_is_named(loss_fn: Any, mode: str, error: type | None,
                                                       message: str) -> None:
    """Not a traceback from inside torch: what the loss did, and on an estimate's meta
    tensors what it may not do there."""
    spec = example_spec("mlp", **TINY["mlp"])
    graph = autopipe.trace(spec.model, spec.example_inputs)
    profile = measure if mode == "measure" else estimate
    kwargs: dict[str, Any] = dict(warmup=0, repeats=1) if mode == "measure" else {}
    run = lambda: profile(graph, spec.example_inputs, loss_fn=loss_fn,  # noqa: E731
                          target=example_target(spec), progress=False, **kwargs)
    if error is None:
        assert run().loss is not None
        return
    with pytest.raises(error) as e:
        run()
    assert message in str(e.value)
    assert e.value.hint
    if error is ProfileError and mode == "estimate":
        assert "device=logits.device" in e.value.hint and ".item()" in e.value.hint


@pytest.mark.parametrize("name", ["detr", "informer", "time-series-transformer"])
def test_a_loss_that_reads_values_is_estimated_on_stand_ins(name: str, tmp_path: Path) -> None:
    """DETR's set loss (``float`` of each matching's cost) and Informer's and the Time Series
    Transformer's likelihood (``Normal`` validates its scale, ``.item()``) cannot run on meta
    tensors; until 2026-12-07 an estimate stopped on them. Now they run on CPU stand-ins of the
    output, priced on the device spec, and their bytes are those a measurement counts on the
    real output. ``autopipe profile --device meta`` writes the loss too."""
    from .zoo import ZOO

    spec = ZOO[name]()
    graph = autopipe.trace(spec.model, spec.example_inputs)
    target = example_target(spec)
    e = estimate(graph, spec.example_inputs, loss_fn=spec.loss_fn, target=target, progress=False)
    assert e.loss is not None and e.loss.forward_s > 0 and e.loss.backward_s > 0
    assert e.meta["loss_on"] == "cpu stand-ins"
    m = measure(graph, spec.example_inputs, loss_fn=spec.loss_fn, target=target, warmup=0, repeats=1,
                progress=False)
    assert m.loss is not None
    for field in ("activation_bytes", "input_bytes", "peak_bytes", "target_bytes"):
        assert getattr(e.loss, field) == getattr(m.loss, field) > 0, field
    if name == "detr":  # the command line, as the issue ran it
        out = tmp_path / "detr.json"
        assert main(["profile", "tests.zoo:detr", "--device", "meta", "--device-spec", "h100",
                     "--no-progress", "-o", str(out)]) == 0
        written = Profile.load(out)
        assert written.loss is not None and written.loss.forward_s > 0 and written.meta["loss_on"] == "cpu stand-ins"


def test_a_forward_that_reads_values_is_named_when_estimated() -> None:
    """The model's forward itself reads a value: no stand-in for a node, a clear error that
    says so (not the loss), naming the node."""

    class Normalised(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.lin(x)
            return y / y.detach().abs().max().item()

    x = torch.randn(2, 4)
    graph = autopipe.trace(Normalised(), (x,))
    with pytest.raises(ProfileError, match=r"node item \(item\) cannot run on meta tensors: the model's "
                                           r"forward reads a tensor's values") as e:
        estimate(graph, (x,), loss_fn=lambda out, t: out.sum(), target=torch.zeros(2), progress=False)
    assert "--device cpu" in str(e.value.hint)


_TUPLE_TARGET = '''
import torch
from autopipe import ModelSpec

def build():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))

    def batch(n, step=0):
        g = torch.Generator().manual_seed(n + 7 * step)
        x = torch.randn(2 * n, 8, generator=g)
        return (x,), (torch.randint(0, 4, (2 * n,), generator=g), torch.full((2 * n,), 4))

    def loss_fn(out, target):
        labels, _ = target
        return torch.nn.functional.cross_entropy(out, labels)

    return ModelSpec(model=model, example_inputs=batch(1)[0], loss_fn=loss_fn, batch=batch)
'''


def test_a_target_that_is_not_one_tensor_is_refused_naming_it(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A target of (labels, lengths), as a CTC loss takes them (HubertForCTC), stopped
    ``autopipe plan`` with "AttributeError: 'tuple' object has no attribute 'to'" from the
    profile; the schedules cut one tensor into micro-batches, so it is refused by name."""
    from autopipe.cli.main import main

    path = tmp_path / "tuple_target.py"
    path.write_text(_TUPLE_TARGET)
    spec = autopipe.load_spec(f"{path}:build")
    with pytest.raises(SpecError, match=r"spec.batch\(1\) gave a tuple of 2 as the target"):
        example_target(spec)
    graph = autopipe.trace(spec.model, spec.example_inputs)
    target = spec.batch(1)[1]
    for profile in (lambda: measure(graph, spec.example_inputs, loss_fn=spec.loss_fn, target=target,
                                    warmup=0, repeats=1, progress=False),
                    lambda: estimate(graph, spec.example_inputs, device_spec="h100", loss_fn=spec.loss_fn,
                                     target=target, progress=False)):
        with pytest.raises(SpecError, match="the example gave a tuple of 2 as the target"):
            profile()
    assert main(["plan", f"{path}:build", "--stages", "2", "-o", str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err
    assert "a target must be one tensor" in err and "hint: stack the target's parts" in err
    assert "Traceback" not in err and not (tmp_path / "p.json").exists()
