"""Tied parameters held by several stages: what the engine must do so that they stay one.

[Note: tied parameters in an export]
A plan that puts the readers of one tied parameter (GPT-2's and BART's shared embedding,
read by the first stage and by the head in the last) in several stages holds a copy in each
and sums their gradients every step (the plan's ``options.tied_sync_s``, what that sum
costs). An engine that builds each stage from its own modules makes the same copies but
sums nothing unless told: the embedding and the head then train apart, silently. The export
reads the plan only, which records the sum's cost but not the parameters, so its note names
what to do, not which parameters (a plan whose links are free records no cost: no note).
"""

from __future__ import annotations

from autopipe.plan_format import Plan

ADVICE = {
    "torchtitan": "torchtitan builds each part from its own copy of the model: sum the tied "
                  "copies' gradients across the parts yourself",
    "deepspeed": "declare them with DeepSpeed's TiedLayerSpec (its key and tied_weight_attr), "
                 "which sums their gradients",
    "megatron": "Megatron-LM ties its word embedding and output layer across the first and last "
                "stages unless --untie-embeddings-and-output-weights, and nothing else",
}


def notes(plan: Plan, fmt: str) -> list[str]:
    """A note where ``plan`` holds tied parameters in several stages; none otherwise."""
    if not plan.options.get("tied_sync_s"):
        return []
    return [f"the plan holds tied parameters in several stages and sums their gradients every "
            f"step; {ADVICE[fmt]}, or the copies train apart"]
