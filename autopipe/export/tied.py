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

from typing import Any

from autopipe.export._words import indices
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


def root_notes(plan: Plan, fmt: str) -> list[str]:
    """A note per parameter of the model itself that ``plan``'s stages read (``root_params``
    in its layer record).

    [Note: the model's own parameters in an export]
    A parameter set on the model itself (CLIP's ``logit_scale``) lies in no module, so no
    part's module list can name it. torchtitan's ``_split_module`` deep-copies the model and
    keeps the modules a part lists, and the root's own parameters with the root: every part
    holds one, though only the stages that read it train it; the others hold a copy that
    never changes and is saved under the same name. DeepSpeed builds a part from its layers
    only: no part holds it. Until 2026-12-07 the exports said nothing of either.
    """
    info: Any = plan.options.get("granularity")
    roots = info.get("root_params") if isinstance(info, dict) else None
    if fmt == "megatron" or not isinstance(roots, list):
        return []
    readers: dict[str, list[int]] = {}
    for stage, names in enumerate(roots):
        for name in names if isinstance(names, list) else ():
            readers.setdefault(str(name), []).append(stage)
    out = []
    for name, stages in readers.items():
        which = indices("stage", stages)
        if fmt == "torchtitan":
            idle = [s for s in range(plan.num_stages) if s not in stages]
            out.append(
                f"{name} is a parameter of the model itself, which torchtitan keeps in every part "
                f"(its module lists cannot name it); {which} read{'s' * (len(stages) == 1)} it"
                + (f", so the copy in {indices('stage', idle)} never trains and is saved, stale, under "
                   f"the same name: delete it from {'that part' if len(idle) == 1 else 'those parts'} "
                   f"after the split" if idle else "")
                + (f"; the copies of {which} train apart unless you sum their gradients"
                   if len(stages) > 1 else ""))
        else:
            out.append(f"{name} is a parameter of the model itself, in none of DeepSpeed's layers: "
                       f"{which} read{'s' * (len(stages) == 1)} it; hold it in a module of "
                       f"{'that stage' if len(stages) == 1 else 'each of those stages'}'s layers "
                       f"(tied with TiedLayerSpec where several read it), or it is not trained")
    return out

