"""What a plan recomputes, in the coarser terms the engines take.

autopipe recomputes chosen blocks per stage (``Stage.recompute``; a layer-granular plan
records the units they lie in, ``LayerSplit.recompute_units``). No engine takes that: each
has one setting for every stage, so an export gives the setting that recomputes at least
what the plan does — its memory then fits — and a note of what it recomputes beyond it (a
slower step than predicted) or cannot recompute (embeddings, head: more memory than
planned):

- torchtitan: ``activation_checkpoint`` ``full`` (every layer of every stage) or ``none``
  (its default, ``selective``, recomputes what the plan did not price);
- DeepSpeed: ``activation_checkpoint_interval`` 1 (every entry of its layer list, those
  before and after the layers too) or 0;
- Megatron-LM: ``--recompute-granularity full --recompute-method block
  --recompute-num-layers N``, the first ``N`` layers of every (virtual) stage, ``N`` the
  most layers a stage of the plan recomputes.
"""

from __future__ import annotations

from autopipe.export.split import LayerSplit


def per_stage(split: LayerSplit) -> list[int]:
    """Layers each stage recomputes (all 0 where the plan recomputes nothing)."""
    return [split.recomputed_layers(s) for s in range(len(split.stage_units))]


def notes(split: LayerSplit, engine: str, recomputes: list[int], *, outside: bool = False) -> list[str]:
    """What ``engine``, recomputing ``recomputes[s]`` layers in stage ``s`` (and with
    ``outside`` what runs before and after the layers too) where the plan recomputes, does
    otherwise than the plan: more layers (slower), or modules outside the layers it does not
    recompute. None of it where the plan recomputes nothing (the engine then does neither)."""
    if not split.recompute_units:
        return []
    planned = per_stage(split)
    out = []
    if recomputes != planned:
        out.append(f"{engine} recomputes {' | '.join(map(str, recomputes))} layers per stage where the "
                   f"plan recomputes {' | '.join(map(str, planned))}: the step will take longer than "
                   f"the plan predicts (memory stays within it)")
    others = [] if outside else split.recomputes_outside_layers()
    if others:
        out.append(f"the plan also recomputes in {', '.join(others)}, outside the layers, which "
                   f"{engine} does not recompute: those stages hold more than the plan counts")
    return out
