"""Stages that hold no parameter, for which the engines' optimizers cannot be built.

[Note: a part without parameters]
A plan may give a stage no parameter: a 4-stage Speech2Text of two subsampling convs has 4
units, the first its inputs alone, so stage 0 receives the inputs and sends them on.
torchtitan builds one optimizer per model part and DeepSpeed one per rank over its stage's
layers, and torch's optimizers refuse an empty parameter list (``ValueError: optimizer got
an empty parameter list``); until 2026-12-07 the exports handed them an empty part (an empty
module list, equal ``parts``) without a word. Megatron-LM's stage of E alone holds the
embedding.
"""

from __future__ import annotations

from autopipe.plan_format import Plan


def notes(plan: Plan, engine: str) -> list[str]:
    """A note where a stage of ``plan`` holds no parameter (``engine``: what builds an
    optimizer per stage, and how); none otherwise."""
    idle = [s.index for s in plan.stages if s.memory.params == 0]
    if not idle:
        return []
    which = f"stage {idle[0]}" if len(idle) == 1 else "stages " + ", ".join(map(str, idle))
    return [f"{which} of the plan hold{'s' * (len(idle) == 1)} no parameter, and {engine}, "
            f"which torch refuses for a part without parameters ('optimizer got an empty "
            f"parameter list'): plan it with {plan.num_stages - len(idle)} stages, or build no "
            f"optimizer for {'that stage' if len(idle) == 1 else 'those stages'}"]
