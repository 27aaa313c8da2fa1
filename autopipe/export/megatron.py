"""Megatron-LM: transformer layers per pipeline stage, as its command-line arguments.

``--pipeline-model-parallel-layout`` names every stage's layers: ``E`` the embedding
(first stage), ``t`` a transformer layer, ``L`` the loss with the output layer (last
stage), ``|`` between stages, ``t*3`` for ``ttt`` (``PipelineParallelLayerLayout``, whose
``parse_str_to_list`` unrolls ``t*N`` for any N: ``tt`` and ``t*2`` are the same layout;
runs of three or more are written ``t*N`` here, shorter ones spelled out).
``--decoder-first-pipeline-num-layers`` / ``--decoder-last-pipeline-num-layers``
say the same when the middle stages hold equal counts and the first and last hold
at least one layer each (Megatron's ``TransformerConfig`` rules); they are given
then, as an alternative to the layout.

The layout counts the transformer layers of one stack, built alike: a plan whose layers
come from two lists, or are no such stack (a ``--cut-at`` over unlike modules,
``LayerSplit.unlike``), is refused; torchtitan's and DeepSpeed's module lists carry it.

``--pipeline-model-parallel-size`` is the plan's pipeline ranks ``P``; an interleaved plan's
layout lists all its ``V·P`` stages, from which Megatron takes ``V`` and puts layout stage
``v·P + r`` on rank ``r``, where the plan puts it. Megatron has no schedule that places a
rank's stages in a V (ZBV, DualPipeV): such plans are refused. Data parallelism is
Megatron's world size over ``P`` (and the tensor-parallel size). Where the plan recomputes,
``--recompute-method block --recompute-num-layers N`` recomputes the first ``N`` layers of
every stage (``autopipe.export.recompute``).
"""

from __future__ import annotations

from typing import Any

from autopipe.errors import ExportError
from autopipe.export import recompute
from autopipe.export.placement import check_placement, sharded
from autopipe.export.split import LayerSplit
from autopipe.plan_format import Plan

# [Note: a layer record without uncut]
#
# A plan's layer record says since 2026-12-07 which other stacks of blocks the plan leaves
# uncut outside its layers (``uncut``: a BART cut at its decoder keeps its encoder in unit 0,
# which Megatron-LM would read as E, the embedding alone). Until 2026-12-07 a record
# without the key passed that check: older plans never wrote it, and plans with no such
# stack left it out. The planner now always writes it (``[]`` for none); a record without
# it is checked for the stacks its units' module paths show, and otherwise refused, since
# a stack inside a module held whole (``model.encoder``) does not show in them.


# [Note: an output layer of its own]
#
# Megatron-LM's GPT model ties its word embedding to its output layer unless
# ``--untie-embeddings-and-output-weights``: a Llama exported without that flag trains a
# different model, its head the embedding's transpose (until 2026-12-07 the export never
# said so). The plan's layer record says whether a parameter is read both before the
# layers and after them (``tied_ends``); where it is not, the arguments untie them; where
# the record does not say (older plans), a note asks.


def _stage(count: int) -> str:
    return "t" * count if count < 3 else f"t*{count}"


def layout(counts: list[int]) -> str:
    """The layout string for ``counts`` layers per stage: ``[0, 2, 2, 0]`` → ``E|tt|tt|L``."""
    stages = [_stage(n) for n in counts]
    stages[0] = "E" + stages[0]
    stages[-1] += "L"
    return "|".join(stages)


def export(plan: Plan, split: LayerSplit) -> dict[str, Any]:
    """Layers per stage, the layout, and the arguments that set it.

    Raises:
        ExportError: the plan's layers come from more than one module list (an
            encoder-decoder's two stacks), another stack runs outside them (inside E or
            L: an encoder where only the decoder is cut), or they are no stack built alike (``--cut-at`` over
            unlike modules: ``LayerSplit.unlike``): the layout counts one stack of
            transformer layers; the model runs a layer several times, its weights shared
            (ALBERT); or its stages lie on the ranks in a V.
    """
    if len(split.lists) > 1 and not split.stacked():  # modules inside the blocks ('model.layers.*.mlp'):
        _refuse_unlike(split)  # "the layers of 6 module lists (model.layers.0, …)" until 2026-12-07
    if len(split.lists) > 1:
        raise ExportError(
            f"Megatron-LM's pipeline layout counts one stack of transformer layers, but this "
            f"plan cuts between the layers of {len(split.lists)} module lists "
            f"({', '.join(split.lists)})",
            hint="export it --format torchtitan or deepspeed, whose module lists hold both "
                 "stacks (cutting one stack only leaves the other inside E or L)")
    uncut = split.uncut if split.uncut is not None else split.visible_stacks()
    if uncut:
        stacks = ", ".join(f"{x} ({n} block{'s' * (n != 1)})" for x, n in uncut)
        raise ExportError(
            f"Megatron-LM's pipeline layout reads E as the embedding and L as the output layer "
            f"and loss, but this plan cuts only between the layers of "
            f"{', '.join(split.lists) or split.pattern!r}, and {stacks} run{'s' * (len(uncut) == 1)} before or after them, "
            f"inside E or L",
            hint="export it --format torchtitan or deepspeed, whose module lists say what each "
                 "stage holds")
    if split.uncut is None:  # [Note: a layer record without uncut]
        raise ExportError(
            "the plan does not record which stacks of blocks it leaves uncut outside its layers "
            "(it was made before 2026-12-07, or its record was edited), so Megatron-LM's E and L "
            "cannot be checked to hold only the embedding and the output layer",
            hint="plan it again with this version of autopipe (`autopipe plan SPEC ... "
                 "--granularity layer`), or export it --format torchtitan or deepspeed")
    _refuse_unlike(split)
    _refuse_shared(split)
    ranks = check_placement(plan, "loop", "Megatron-LM", "plan it with --schedule interleaved-1f1b "
                            "for Megatron's interleaved schedule, or export it --format torchtitan")
    counts = split.layers_per_stage()
    text = layout(counts)
    base = ["--pipeline-model-parallel-size", str(ranks), "--num-layers", str(split.num_layers)]
    out: dict[str, Any] = {
        "pipeline_model_parallel_size": ranks, "num_layers": split.num_layers,
        "layers_per_stage": counts, "pipeline_model_parallel_layout": text,
        "args": [*base, "--pipeline-model-parallel-layout", text],
    }
    if plan.num_stages > ranks:
        out["virtual_pipeline_model_parallel_size"] = plan.num_stages // ranks
    n = max(recompute.per_stage(split))
    if n:
        flags = ["--recompute-granularity", "full", "--recompute-method", "block", "--recompute-num-layers", str(n)]
        out["recompute_num_layers"] = n
        out["args"] += flags
    if sharded(plan):  # [Note: sharded optimizer states in an export]
        out["args"].append("--use-distributed-optimizer")
    untie = ["--untie-embeddings-and-output-weights"] if split.tied_ends is False else []
    out["args"] += untie  # [Note: an output layer of its own]
    middle = counts[1:-1]
    if plan.num_stages == ranks and len(counts) > 1 and counts[0] > 0 and counts[-1] > 0 \
            and len(set(middle)) <= 1 and all(middle):
        out["uneven_args"] = [*base, "--decoder-first-pipeline-num-layers", str(counts[0]),
                              "--decoder-last-pipeline-num-layers", str(counts[-1])]
        if n:
            out["uneven_args"] += flags
        if sharded(plan):
            out["uneven_args"].append("--use-distributed-optimizer")
        out["uneven_args"] += untie
    out["notes"] = recompute.notes(split, f"Megatron-LM (--recompute-num-layers {n})",
                                   [min(n, c) for c in counts])
    if split.tied_ends is None:
        out["notes"].append("the plan does not record whether the model ties its embedding to its "
                            "output layer (planned before 2026-12-07): Megatron-LM ties them unless "
                            "--untie-embeddings-and-output-weights, which a model whose output layer "
                            "has its own weight needs")
    return out


def _refuse_unlike(split: LayerSplit) -> None:
    """Raise where the plan's layers are no stack of transformer layers built alike
    (``LayerSplit.unlike``), which Megatron-LM's layout counts.

    Raises:
        ExportError: naming why, with the --cut-at that would make one.
    """
    why = split.unlike()
    if why is None:
        return
    # the blocks --granularity layer found are the model's heaviest: "--cut-at naming the blocks
    # of one stack ('model.layers.*')" sent a Jamba (model.layers.*, Mamba and attention layers)
    # back to the pattern it was refused for, until 2026-12-07
    again = (f"--granularity layer found these ({', '.join(split.lists) or split.pattern}): where "
             f"another module list of the model holds blocks built alike, plan it again with "
             f"--cut-at naming them"
             if split.auto else "plan it again with --granularity layer and no --cut-at (it "
             "finds the repeated blocks), or a --cut-at naming all the blocks of one stack "
             "('model.layers.*')")
    raise ExportError(
        f"Megatron-LM's pipeline layout counts the transformer layers of one stack, but the "
        f"layers this plan cuts between ({split.num_layers}, matched by {split.pattern!r}) {why}",
        hint=f"{again}; or export it --format torchtitan or deepspeed, whose module lists "
             f"say exactly what each stage holds")


def _refuse_shared(split: LayerSplit) -> None:
    """Raise where the model runs one of the plan's layers several times, its weights shared
    ([Note: a layer run several times] in ``autopipe.partition.layers``): Megatron-LM's
    layers each hold their own weights, and ``--num-layers`` would count it once.

    Raises:
        ExportError: naming the layer and how many times it runs.
    """
    shared = split.shared()
    if not shared:
        return
    runs = ", ".join(f"{x} runs {k} times" for x, k in shared)
    total = len(split.runs)
    raise ExportError(
        f"Megatron-LM's layers each hold their own weights and run once, but this model runs a "
        f"layer several times over, its weights shared ({runs}): --num-layers {split.num_layers} "
        f"would build {split.num_layers} layer{'s' * (split.num_layers != 1)} where the model "
        f"runs {total}",
        hint="export it --format torchtitan (whose parts keep the modules, and the model's own "
             "loop over them) or deepspeed (whose layer list gives the layer once per run)")
