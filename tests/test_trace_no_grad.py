"""autopipe/trace/no_grad.py: the values the trace marks as surely without a gradient have none
when the stages run ([Note: values without a gradient])."""

from __future__ import annotations

import pytest
import torch

import autopipe
from autopipe.runtime.prepare import prepare

from .runtime_cases import Case
from .runtime_plans import plan_from_cuts, valid_cuts


@pytest.mark.parametrize("case", [Case("gpt2", 2), Case("llama", 2), Case("bert", 2), Case("unet", 2),
                                  Case("resnet", 2), Case("mixtral", 2, zoo=True), Case("t5", 2, zoo=True)],
                         ids=lambda c: c.name)
def test_marked_values_have_no_gradient_at_any_cut(case: Case) -> None:
    """At every cut of the model (each alone), a value the trace marks arrives without a
    gradient, as the stages' fake run finds (``stage_metas``, what the runtime sends by); a
    transformer's cuts carry marked values (its mask, positions or rotary tables)."""
    spec = case.spec()
    graph = case.build(hand=True)[1]
    marked = {n.name for n in graph.nodes if n.no_grad}
    seen = 0
    cuts = valid_cuts(graph)
    for cut in cuts[:: max(1, len(cuts) // 12)]:
        plan = plan_from_cuts(graph, [cut])
        prepared = prepare(spec, plan, 2, graph, pack=False)
        for name, value in zip(prepared.split.stages[0].outputs, prepared.metas[0].outputs, strict=True):
            if name in marked:  # (an unmarked one is priced as having a gradient, and may not)
                seen += 1
                assert not value.requires_grad, (cut, name)
    if case.example not in ("unet", "resnet"):
        assert seen > 0
    # a value computed from a parameter is never marked; the model's inputs always are
    for n in graph.nodes:
        if n.params or n.shared_params:
            assert n.name not in marked or not (n.dtype or "float").startswith(("float", "bfloat"))
        if n.op == "placeholder":
            assert n.name in marked


def test_integers_made_from_parameters_are_marked() -> None:
    """An argmax over a linear layer's output reads a parameter but is an integer: no gradient."""

    class Router(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gate = torch.nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = self.gate(x)
            return logits * logits.argmax(-1, keepdim=True)

    graph = autopipe.trace(Router(), (torch.randn(2, 4),))
    marked = [n.target for n in graph.nodes if n.no_grad and n.op != "placeholder"]
    assert len(marked) == 1 and "argmax" in marked[0], [(n.name, n.target, n.no_grad) for n in graph.nodes]
