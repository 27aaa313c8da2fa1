"""Tests for autopipe/runtime/timing.py: a rank's stages timed in its schedule's order, as the runtime runs them."""

from __future__ import annotations

import mmap
import resource

import pytest
import torch
from torch import nn

import autopipe
from autopipe.refine import rank_programs
from autopipe.runtime.grad_accum import _MADV_POPULATE_READ, fused_linear, zero_pages_like
from autopipe.runtime.split import split_graph
from autopipe.runtime.stage import fuse_as_planned
from autopipe.runtime.timing import run_program, single_program, time_stages
from autopipe.runtime.validate import model_constants

from .conftest import example_spec
from .runtime_plans import hand_plan


class _Counted(nn.Module):
    """A linear layer that logs the order its forwards and backwards run in."""

    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.log = log

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        self.log.append("F")
        y = self.linear(x)
        y.register_hook(lambda g: self.log.append("B"))
        return (y,)


def test_a_program_runs_its_order_with_microbatches_in_flight_and_drops_the_gradients_first() -> None:
    log: list[str] = []
    module = _Counted(log)
    x = torch.randn(2, 4, requires_grad=True)
    program = [(0, "F", 0), (0, "F", 1), (0, "B", 0), (0, "F", 2), (0, "B", 1), (0, "B", 2)]
    runs = run_program(program, {0: module}, {0: [x]}, clock=lambda: 0.0)
    assert log == ["F", "F", "B", "F", "B", "B"]
    assert len(runs[0]) == 3
    once = module.linear.weight.grad.clone()
    run_program(program, {0: module}, {0: [x]}, clock=lambda: 0.0)
    # a second step starts from no gradient, as training's zero_grad(set_to_none=True)
    torch.testing.assert_close(module.linear.weight.grad, once)
    assert single_program([0, 2]) == [(0, "F", 0), (0, "B", 0), (2, "F", 0), (2, "B", 0)]


class _EncoderDecoder(nn.Module):
    """Returns its encoder's output and the decoder's, which reads it (as T5's last stage)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder, self.decoder = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.encoder(x)
        return self.decoder(hidden), hidden


def test_the_loss_is_timed_apart_where_one_output_is_computed_from_another() -> None:
    """[Note: the loss's backward on its own]: its backward ran through the decoder too, and the
    stage's then raised "Trying to backward through the graph a second time"."""
    module = _EncoderDecoder()
    x = torch.randn(2, 4, requires_grad=True)
    target = torch.tensor([0, 2])

    def loss(outs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return nn.functional.cross_entropy(outs[0], target)

    runs = run_program(single_program([0]), {0: module}, {0: [x]}, clock=lambda: 0.0, loss=loss, last=0)
    assert len(runs[0]) == 1
    # the gradients are the loss's, each once
    expected = _EncoderDecoder()
    expected.load_state_dict(module.state_dict())
    loss(expected(x)).backward()
    for (name, p), q in zip(module.named_parameters(), expected.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_rank_programs_are_the_schedule_orders_torch_runs() -> None:
    spec = example_spec("mlp")
    graph = autopipe.trace(spec.model, spec.example_inputs)
    plan = hand_plan(graph, 2, microbatches=4, schedule="1f1b")
    programs = rank_programs(plan)
    assert [(k, mb) for _, k, mb in programs[0]] == [("F", 0), ("F", 1), ("B", 0), ("F", 2), ("B", 1),
                                                    ("F", 3), ("B", 2), ("B", 3)]
    assert [(k, mb) for _, k, mb in programs[1]] == [(k, mb) for mb in range(4) for k in "FB"]
    assert {s for s, _, _ in programs[1]} == {1}
    zb = rank_programs(hand_plan(graph, 2, microbatches=4, schedule="zb-h1"))
    assert all(k in "FB" for program in zb.values() for _, k, _ in program)  # W runs inside B


def test_stages_are_timed_as_the_runtime_runs_them() -> None:
    """``prepare`` makes each rank's copies what ``build_pipeline`` makes: the linear layers'
    weight gradients added in place, the modules handed over a rank at a time (exported:
    the fused path takes aten's linear, not fx's ``call_module``)."""
    spec = example_spec("mlp")
    graph = autopipe.trace(spec.model, spec.example_inputs, frontend="export")
    plan = hand_plan(graph, 2, microbatches=2, schedule="1f1b")
    split = split_graph(graph, plan, model_constants(graph, spec))
    seen: list[list[nn.Module]] = []

    def prepare(modules: list[nn.Module]) -> None:
        seen.append(modules)
        fuse_as_planned(modules, plan, torch.device("cpu"), {n for g in graph.tied for n in g})

    times = time_stages(split, list(spec.example_inputs), repeats=2, warmup=0, programs=rank_programs(plan),
                        prepare=prepare)
    assert len(times.forward_s) == 2 and all(t > 0 for t in (*times.forward_s, *times.backward_s))
    assert [len(m) for m in seen] == [1, 1]
    targets = {n.target for m in seen for gm in m for n in gm.graph.nodes}  # type: ignore[union-attr]
    assert fused_linear in targets
    assert all(n.target is not fused_linear for st in split.stages for n in st.module.graph.nodes)


def _populates() -> bool:
    """Whether this kernel maps a range readable in one call (``MADV_POPULATE_READ``, Linux 5.14)."""
    buf = mmap.mmap(-1, 1 << 16, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        buf.madvise(_MADV_POPULATE_READ)
    except OSError:
        return False
    finally:
        buf.close()
    return True


def test_a_zero_page_gradient_reads_without_a_fault_per_page() -> None:
    """Populated readable when made ([Note: an embedding's gradient on zero pages]): the
    optimizer's read of 4 MiB of zeros takes no fault per 4 KiB page (1,024 before)."""
    if not _populates():
        pytest.skip("this kernel cannot populate a mapping readable (MADV_POPULATE_READ, Linux 5.14)")
    grad = zero_pages_like(torch.empty(1024, 1024))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    total = grad.sum().item()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert total == 0.0
    assert faults < 256
