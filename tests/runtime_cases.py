"""The runtime test cases: tiny example models, plans and training settings shared by tests and ranks.

Plans come from autopipe's planner (the ILP on an estimated profile, which is
deterministic) where it models the schedule (1F1B, GPipe, zb-h1 with one stage per rank,
interleaved 1F1B, ZBV and DualPipeV with 2 chunks per rank), and from contiguous hand cuts
for the others.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from autopipe import Graph, ModelSpec, trace
from autopipe.partition.degrees import plan_degrees
from autopipe.partition.planner import DEFAULT_MAX_BLOCKS, plan_profile
from autopipe.partition.problem import SCHEDULES as PLANNER_SCHEDULES
from autopipe.plan_format import Plan
from autopipe.profile import estimate, measure
from autopipe.runtime.launch import launch
from autopipe.runtime.optim import TrainConfig
from autopipe.runtime.reference import reference_train
from autopipe.runtime.split import Split
from autopipe.runtime.split_backward import backward_input, backward_weight, loss_views
from autopipe.runtime.tied import canonical_names
from autopipe.spec import example_target

from .conftest import ROOT, example_spec
from .runtime_plans import balanced_cuts, hand_plan, plan_from_cuts

TINY: dict[str, dict[str, Any]] = {
    "mlp": dict(in_dim=16, hidden=32, layers=4, batch_size=4),
    "gpt2": dict(n_layer=2, n_embd=32, n_head=2, vocab_size=256, seq_len=16, batch_size=2),
    "llama": dict(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=256, seq_len=16, batch_size=2),
    "resnet": dict(width=4, blocks=(1, 1), image=8, batch_size=4),
    "unet": dict(width=4, depth=3, image=16, batch_size=2),
    "bert": dict(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                 vocab_size=256, seq_len=16, batch_size=2),
}


@dataclass(frozen=True)
class Case:
    """One model trained with one plan."""

    example: str
    stages: int
    schedule: str = "1f1b"
    microbatches: int = 4
    ranks: tuple[int, ...] | None = None
    optimizer: str = "sgd-momentum"
    steps: int = 3
    lr: float = 0.05
    knobs: dict[str, Any] = field(default_factory=dict)
    tied_sync: bool = True
    """False only for the negative control: tied copies are left to drift."""
    zoo: bool = False
    """``example`` names a model of tests/zoo.py (else one of examples/)."""
    profile: str = "estimate"
    """How the planner's profile is made: ``estimate`` (deterministic) or ``measure`` (on this
    CPU, the loss included)."""
    replicas: int = 1
    """Data-parallel replicas (> 1: planned by ``plan_degrees`` on ``stages × replicas`` GPUs,
    the global batch ``replicas × microbatches`` micro-batches)."""
    placement: str = "pipelines"
    """With replicas: the rank order (``autopipe.partition.replicas.PLACEMENTS``)."""
    shard_optimizer: bool = False
    """With replicas: the plan shards each stage's optimizer states over them (ZeRO-1)."""
    recompute: str = "none"
    """The planner's recomputation (``full``: every block that can be runs under checkpointing)."""
    max_blocks: int = DEFAULT_MAX_BLOCKS
    """The planner's coarsening target (fewer: blocks of many nodes)."""
    remake: str = "auto"
    """Which values that depend on no input the planner has a reading stage make again
    ([Note: values made again]; ``all``: every one)."""
    loss_alone: bool = False
    """Hand cuts whose last stage holds only the model's output: it receives the logits and
    runs the loss alone (a plan the planner makes where the loss outweighs a stage's share)."""
    links: tuple[float, float] | None = None
    """The send latency and link bandwidth the planner prices (else the estimate's: none and
    the device's); (1e-7, 1e9) sends every value without a gradient of more than 100 bytes
    forward only ([Note: values without a gradient])."""

    @property
    def name(self) -> str:
        dtype = {"bfloat16": "-bf16"}.get(str(self.knobs.get("dtype")), "")
        dp = f"x{self.replicas}-{self.placement}" if self.replicas > 1 else ""
        dtype += "-dropout" if self.knobs.get("dropout") else ""
        return (("zoo-" if self.zoo else "") + f"{self.example}-{self.stages}{dp}-{self.schedule}{dtype}"
                + ("" if self.tied_sync else "-untied")
                + ("" if self.recompute == "none" else f"-recompute-{self.recompute}")
                + ("" if self.max_blocks == DEFAULT_MAX_BLOCKS else f"-blocks{self.max_blocks}")
                + ("" if self.remake == "auto" else f"-remake-{self.remake}")
                + ("" if self.links is None else "-forward-only")
                + ("-loss-alone" if self.loss_alone else "")
                + (f"-{self.optimizer}" if self.replicas > 1 and self.optimizer != "sgd-momentum" else "")
                + ("-zero1" if self.shard_optimizer else ""))

    @property
    def world_size(self) -> int:
        """Ranks the case runs on."""
        return len(set(self.ranks or range(self.stages))) * self.replicas

    def spec(self) -> ModelSpec:
        if self.zoo:
            from .zoo import ZOO

            return ZOO[self.example]()
        return example_spec(self.example, **{**TINY[self.example], **self.knobs})

    @property
    def planned(self) -> bool:
        """Whether autopipe's planner makes this case's plan (else: hand cuts)."""
        return self.schedule in PLANNER_SCHEDULES and self.ranks is None and not self.loss_alone

    def plan(self, spec: ModelSpec, graph: Graph, *, hand: bool = False) -> Plan:
        if self.planned and not hand:
            if self.profile == "measure":  # with the loss, as autopipe plan SPEC measures
                profile = measure(graph, spec.example_inputs, spec.example_kwargs, progress=False,
                                  loss_fn=spec.loss_fn, target=example_target(spec))
            else:
                profile = estimate(graph, spec.example_inputs, spec.example_kwargs, progress=False)
            bandwidth = None
            if self.links is not None:
                profile = replace(profile, runtime={**profile.runtime, "send_latency_s": self.links[0]})
                bandwidth = self.links[1]
            if self.replicas > 1:
                size = int(spec.example_inputs[0].shape[0])
                return plan_degrees(profile, gpus=self.world_size, stages=self.stages,
                                    batch_size=self.replicas * self.microbatches * size,
                                    microbatches=self.microbatches, schedule=self.schedule,
                                    placements=(self.placement,), method="ilp", remake=self.remake,
                                    shard_optimizer=self.shard_optimizer)
            return plan_profile(profile, num_stages=self.stages, microbatches=self.microbatches,
                                schedule=self.schedule, method="ilp", recompute=self.recompute,
                                max_blocks=self.max_blocks, remake=self.remake, link_bandwidth=bandwidth)
        if self.loss_alone:
            return plan_from_cuts(graph, [*balanced_cuts(graph, self.stages - 1), len(graph.nodes) - 2],
                                  microbatches=self.microbatches, schedule=self.schedule)
        return hand_plan(graph, self.stages, microbatches=self.microbatches, schedule=self.schedule,
                         ranks=self.ranks)

    def build(self, *, hand: bool = False) -> tuple[ModelSpec, Graph, Plan]:
        spec = self.spec()
        graph = trace(spec.model, spec.example_inputs, spec.example_kwargs)
        return spec, graph, self.plan(spec, graph, hand=hand)


CASES = {c.name: c for c in [
    *(Case(name, 2) for name in TINY),
    *(Case(name, 4) for name in TINY),
    Case("resnet", 2, "gpipe"),
    Case("mlp", 2, "zb-h1"),
    Case("gpt2", 4, "interleaved-1f1b", ranks=(0, 1, 0, 1)),
    # planned: 2 ranks x 2 chunks, cut by the ILP ([Note: chunks])
    Case("gpt2", 2, "interleaved-1f1b"),
    Case("bert", 2, "zbv"),
    Case("bert", 2, "dualpipev"),  # overlapped forward and backward pairs ([Note: DualPipeV])
    Case("unet", 4, "zb-h1", ranks=(0, 1, 0, 1)),
    Case("gpt2", 4, "zbv", ranks=(0, 1, 1, 0)),
    Case("llama", 4, "looped-bfs", ranks=(0, 1, 0, 1)),
    Case("bert", 4, "dualpipev", ranks=(0, 1, 1, 0)),
    Case("gpt2", 2, tied_sync=False),
    # bf16 weights: both sides train through fp32 master copies ([Note: master weights])
    Case("llama", 2, optimizer="adam", lr=1e-2, knobs={"dtype": "bfloat16"}),
    # pipeline x data parallel (tests/test_runtime_data_parallel.py)
    Case("gpt2", 2, replicas=2),
    Case("llama", 2, replicas=2, placement="replicas"),
    Case("gpt2", 1, replicas=2),
    Case("mlp", 2, "zb-h1", replicas=2),  # split backward: weight gradients as separate actions
    # ZeRO-1: each stage's optimizer states split over its replicas ([Note: the sharded
    # optimizer step]); tied embedding against one process; Adam, and bf16 through master
    # weights, against the same plan unsharded (Adam's updates of gradients near 0 follow
    # the all-reduce's rounding, which one process does not share)
    Case("gpt2", 2, replicas=2, shard_optimizer=True),
    Case("mlp", 2, replicas=2, optimizer="adam"),
    Case("mlp", 2, replicas=2, optimizer="adam", shard_optimizer=True),
    Case("llama", 2, replicas=2, optimizer="adam", lr=1e-2, knobs={"dtype": "bfloat16"}),
    Case("llama", 2, replicas=2, optimizer="adam", lr=1e-2, knobs={"dtype": "bfloat16"}, shard_optimizer=True),
    # recomputation: every block that can be runs under checkpointing ([Note: recomputed
    # regions]); tied weights, batch-norm statistics, skips
    Case("gpt2", 2, recompute="full"),
    Case("resnet", 2, "gpipe", recompute="full"),
    Case("bert", 2, recompute="full"),
    Case("llama", 4, recompute="full", max_blocks=32),  # blocks of many nodes
    Case("unet", 4, recompute="full"),
    # 2 ranks x 2 chunks, each chunk's blocks checkpointed ([Note: chunks]); zero bubble:
    # each W action recomputes once ([Note: recomputation in a split backward])
    Case("gpt2", 2, "interleaved-1f1b", recompute="full"),
    Case("bert", 2, "zbv", recompute="full"),
    Case("bert", 2, "dualpipev", recompute="full"),
    Case("gpt2", 2, "zb-h1", recompute="full"),
    # dropout: every random node draws per node, step and micro-batch, as one process does
    # ([Note: random draws per node and micro-batch]); recomputed, split backward, replicas
    Case("gpt2", 2, knobs={"dropout": 0.1}),
    Case("gpt2", 2, recompute="full", knobs={"dropout": 0.1}),
    Case("bert", 2, "zbv", knobs={"dropout": 0.1}),
    Case("bert", 2, "dualpipev", knobs={"dropout": 0.1}),
    Case("gpt2", 2, replicas=2, knobs={"dropout": 0.1}),
    # the mask and rotary tables made again by each stage that reads them, not sent
    # ([Note: values made again]); zb-h1: made again under a split backward
    Case("llama", 2, remake="all"),
    Case("llama", 2, "zb-h1", remake="all"),
    Case("llama", 4, remake="all"),
    Case("llama", 2, "interleaved-1f1b", remake="all"),  # chunks of one rank make them each
    Case("llama", 2, "zbv", remake="all"),
    Case("llama", 2, "dualpipev", remake="all"),
    Case("llama", 2, recompute="full", remake="all"),  # next to recomputed regions
    Case("llama", 2, replicas=2, remake="all"),  # each replica's stages
    # the mask, positions and rotary tables sent forward only, in a message of their own,
    # nothing coming back for them ([Note: values without a gradient])
    Case("llama", 2, remake="none", links=(1e-7, 1e9)),
    Case("llama", 4, remake="none", links=(1e-7, 1e9)),
    Case("bert", 2, "dualpipev", remake="none", links=(1e-7, 1e9)),
    Case("gpt2", 2, "zb-h1", remake="none", links=(1e-7, 1e9)),
    # the last stage runs the loss alone on the logits it receives ([Note: the loss is part
    # of the last stage]); tied copies on the stages before it
    Case("gpt2", 4, loss_alone=True),
    Case("llama", 2, loss_alone=True),
]}


WORKER_ENV = {"PYTHONPATH": str(ROOT), "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": "1"}
"""The environment of the ranks the tests start."""


def run_job(out: Path, ranks: int, cases: list[Case]) -> None:
    """Save each case's plan in ``out`` and train them all on ``ranks`` gloo ranks
    (tests/runtime_worker.py); each rank's results land in ``out``."""
    for case in cases:
        case.build()[2].save(out / f"{case.name}.plan.json")
    log = out / "log.txt"
    with open(log, "w") as f:
        result = launch([sys.executable, "-m", "tests.runtime_worker", str(out), *(c.name for c in cases)],
                        ranks, env=WORKER_ENV, timeout_s=400, grace_s=20,
                        stdout=f, stderr=subprocess.STDOUT, log=f)
    assert result.code == 0, log.read_text()[-3000:]


def compare_with_one_process(case: Case, out: Path) -> None:
    """The losses and every parameter and buffer the ranks saved in ``out`` (by
    tests/runtime_worker.py) equal ``reference_train`` of a fresh copy of the model."""
    spec = case.spec()
    graph = trace(spec.model, spec.example_inputs)
    config = TrainConfig(steps=case.steps, lr=case.lr, optimizer=case.optimizer)
    initial = {k: v.detach().clone() for k, v in graph.gm.named_parameters()}
    # one process trains on the whole global batch: every replica's micro-batches
    ref_losses = reference_train(spec, graph, case.microbatches * case.replicas, config)
    results = [torch.load(f) for f in sorted(out.glob(f"{case.name}.rank*.pt"))]
    assert len(results) == case.world_size
    losses = [r["losses"] for r in results if r["losses"]]
    assert len(losses) == 1, "exactly one rank (the last stage's) reports losses"
    torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(ref_losses), rtol=1e-6, atol=1e-6)

    canonical = canonical_names(graph)
    expected = {canonical.get(k, k): v for k, v in
                [*graph.gm.named_parameters(remove_duplicate=False), *graph.gm.named_buffers()]}
    seen: set[str] = set()
    for r in results:
        for name, value in r["state"].items():
            if name not in expected:  # a tensor constant of the graph (export's lifted_tensor_0),
                # which a stage's GraphModule holds as a buffer
                expected[name] = _attr(graph.gm, name)
            torch.testing.assert_close(value, expected[name].detach(), rtol=1e-5,
                                       atol=1e-6 * _magnitude(initial.get(name), expected[name].detach()),
                                       msg=lambda m, name=name: f"{case.name}: {name}: {m}")
            seen.add(name)
    assert set(initial) <= seen, f"parameters no rank trained: {sorted(set(initial) - seen)}"
    moved = sum(not torch.equal(initial[k], expected[k]) for k in initial)
    assert moved >= len(initial) // 2, "training changed too few parameters to test anything"


def _magnitude(initial: torch.Tensor | None, trained: torch.Tensor) -> float:
    """The size of what a trained value was summed from: its start and its update (at least 1).

    Rounding errs by ulps of the operands, not of the result: RWKV's embedding rows move by
    about 3 in one SGD step (gradients near 70 from its exponentials), and an element that
    lands near 0.02 then differs by a few ulps of 3 (1.4e-6, cut after ``maximum_19``), with
    the per-micro-batch gradients equal to 5e-10 (2026-12-03).
    """
    if initial is None or not trained.is_floating_point():
        return 1.0
    return max(1.0, initial.abs().max().item(), (trained - initial).abs().max().item())


def trained_state(modules: Iterable[torch.nn.Module], graph: Graph) -> dict[str, torch.Tensor]:
    """Copies of the parameters and buffers of a rank's stage modules, by canonical name."""
    canonical = canonical_names(graph)
    return {canonical.get(k, k): v.detach().cpu().clone() for module in modules
            for k, v in [*module.named_parameters(remove_duplicate=False), *module.named_buffers()]}


def _attr(module: torch.nn.Module, dotted: str) -> torch.Tensor:
    value: Any = module
    for part in dotted.split("."):
        value = getattr(value, part)
    assert isinstance(value, torch.Tensor), dotted
    return value


def pipeline_backward(split: Split, flat: list[torch.Tensor],
                       loss_fn: Callable[[list[Any]], torch.Tensor], *, split_backward: bool = False) -> torch.Tensor:
    """Run the stages as the runtime does (each receives fresh leaves, backward is sent
    back stage by stage); parameter gradients land in ``.grad``. ``loss_fn`` takes the
    model's flat outputs. Returns the loss.

    ``split_backward``: as the zero-bubble schedules run it, every stage but the first
    computes its input gradients first and its weight gradients after all of those
    (``autopipe.runtime.split_backward``); split by a plan of such a schedule, whose sent
    outputs are copies.
    """
    values: tuple[torch.Tensor, ...] = tuple(flat)
    runs = []
    for k, st in enumerate(split.stages):
        if k > 0:
            values = tuple(v.detach().requires_grad_(v.requires_grad) for v in values)
        outs = st.module(*values)
        runs.append((values, outs))
        values = outs
    loss = loss_fn(split.rebuild_outputs(loss_views(values) if split_backward else values))
    if split_backward:
        works = []
        outputs: list[torch.Tensor] = [loss]
        grads: list[torch.Tensor] | None = None
        for k in range(len(runs) - 1, 0, -1):
            received = runs[k][0]
            works.append(backward_input(outputs, grads, received, split.stages[k].module.parameters())[1])
            if k == len(runs) - 1:  # torch's last stage detaches the model's outputs after I
                for out in runs[k][1]:
                    if isinstance(out, torch.Tensor) and not out._is_view():
                        out.detach_()
            sent = [(o, r.grad) for o, r in zip(runs[k - 1][1], received) if r.grad is not None]
            outputs, grads = [o for o, _ in sent], [g for _, g in sent]
        torch.autograd.backward(outputs, grads)  # the first stage: its inputs need no gradient
        for work in works:
            backward_weight(work)
        return loss
    loss.backward()
    for k in range(len(runs) - 1, 0, -1):
        received = runs[k][0]
        sent = [(o, r.grad) for o, r in zip(runs[k - 1][1], received) if r.grad is not None]
        torch.autograd.backward([o for o, _ in sent], [g for _, g in sent])
    return loss
