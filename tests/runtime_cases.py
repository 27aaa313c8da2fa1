"""The runtime test cases: tiny example models, plans and training settings shared by tests and ranks.

Plans come from autopipe's planner (the ILP on an estimated profile, which is
deterministic) where it models the schedule (1F1B, GPipe, zb-h1 with one stage per rank),
and from contiguous hand cuts for the schedules with several stages per rank.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from autopipe import Graph, ModelSpec, trace
from autopipe.partition.planner import plan_profile
from autopipe.partition.problem import SCHEDULES as PLANNER_SCHEDULES
from autopipe.plan_format import Plan
from autopipe.profile import estimate

from .conftest import example_spec
from .runtime_plans import hand_plan

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

    @property
    def name(self) -> str:
        dtype = {"bfloat16": "-bf16"}.get(str(self.knobs.get("dtype")), "")
        return f"{self.example}-{self.stages}-{self.schedule}{dtype}" + ("" if self.tied_sync else "-untied")

    def spec(self) -> ModelSpec:
        return example_spec(self.example, **{**TINY[self.example], **self.knobs})

    @property
    def planned(self) -> bool:
        """Whether autopipe's planner makes this case's plan (else: hand cuts)."""
        return self.schedule in PLANNER_SCHEDULES and self.ranks is None

    def plan(self, spec: ModelSpec, graph: Graph, *, hand: bool = False) -> Plan:
        if self.planned and not hand:
            profile = estimate(graph, spec.example_inputs, spec.example_kwargs, progress=False)
            return plan_profile(profile, num_stages=self.stages, microbatches=self.microbatches,
                                schedule=self.schedule, method="ilp")
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
    Case("unet", 4, "zb-h1", ranks=(0, 1, 0, 1)),
    Case("gpt2", 4, "zbv", ranks=(0, 1, 1, 0)),
    Case("llama", 4, "looped-bfs", ranks=(0, 1, 0, 1)),
    Case("bert", 4, "dualpipev", ranks=(0, 1, 1, 0)),
    Case("gpt2", 2, tied_sync=False),
    # bf16 weights: both sides train through fp32 master copies ([Note: master weights])
    Case("llama", 2, optimizer="adam", lr=1e-2, knobs={"dtype": "bfloat16"}),
]}
