"""Tests for autopipe/export/params.py: given the plan's profile, every parameter of a zoo model
lands in a part, and a part that keeps a copy its stage never reads is told so ([Note: every
parameter in a part]). The parts are applied to the model as torchtitan's ``_split_module``
(``split_module``) and DeepSpeed's layer list (each entry's modules, whole) would apply them,
so a part's parameters are read off the model, not off the export.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from torch import nn

from autopipe.errors import AutopipeError, ExportError
from autopipe.export import export_plan
from autopipe.export.params import UNRECORDED, kept
from autopipe.plan_format import Plan
from autopipe.profile.profile import Profile
from tests import zoo
from tests.test_export import canonical, split_module, stage_params
from tests.test_export_zoo import planned, profiled

DEFECTS = {"esm": 2, "t5gemma2": 4, "decision-transformer": 2, "wav2vec2-conformer": 2, "xlnet": 4,
           "deberta": 2, "dinov2": 2, "clip": 2, "mllama": 2, "blip2": 2, "layoutlmv3": 2,
           "hrm-text": 2, "gpt-neox": 2, "bart": 2}
"""Zoo models and stage counts the export sweep of 2026-12-07 found a parameter in no part, a
copy nobody reads, a holder DeepSpeed's layers lacked, or one that encloses layers (BLIP-2) in
(with two that had none)."""


def torchtitan_parts(name: str, plan: Plan, profile: Profile) -> list[set[str]]:
    """Per part, the canonical parameters torchtitan's split of the export keeps."""
    model = profiled(name)[0].model
    names = canonical(model)
    parts = export_plan(plan, "torchtitan", profile)["parallelism"]["module_fqns_per_model_part"]
    modules = dict(model.named_modules(remove_duplicate=False))
    assert {m for p in parts for m in p} <= set(modules), "a part names no module of the model"
    return [{names[n] for n, _ in split_module(model, fqns).named_parameters(remove_duplicate=False)}
            for fqns in parts]


def deepspeed_parts(model: nn.Module, data: dict[str, object]) -> list[set[str]]:
    """Per stage, the canonical parameters of DeepSpeed's layers and holders for it."""
    names, modules = canonical(model), dict(model.named_modules(remove_duplicate=False))
    layers, bounds, holders = data["layers"], data["parts"], data["holders"]
    assert isinstance(layers, list) and isinstance(bounds, list) and isinstance(holders, list)
    out = []
    for a, b, held in zip(bounds, bounds[1:], holders):
        paths = [m for entry in layers[a:b] for m in entry] + held
        # every name a module of the model: T5Gemma2's units named ``vmap_0`` (the trace's
        # submodule for its mask's torch.vmap) until 2026-12-08 ([Note: vmap regions])
        assert set(paths) <= set(modules), sorted(set(paths) - set(modules))
        out.append({names[f"{m}.{n}"] for m in paths
                    for n, _ in modules[m].named_parameters(remove_duplicate=False)})
    return out


def assert_every_parameter_in_a_part(name: str, stages: int) -> None:
    """The union of the parts is the model's parameters, for torchtitan and DeepSpeed (where
    the format takes the plan; but for those a note names); each part holds what its stage reads; and a parameter that
    parts keep without reading it is named in a note (else a checkpoint of the parts saves a
    stale copy beside the trained one)."""
    spec, profile = profiled(name)
    plan = planned(name, stages)
    everything = set(canonical(spec.model).values())
    want = stage_params(plan, profile)
    unread = {q for n in profile.nodes if n.op == "output" for q in n.params}
    roots = {q for q in everything if "." not in q}  # [Note: the model's own parameters in an export]
    for fmt in ("torchtitan", "deepspeed"):
        try:
            data = export_plan(plan, fmt, profile)
        except ExportError:
            continue
        # the plan's own record says what the profile does ([Note: the parameters in a plan's
        # layer record])
        assert export_plan(plan, fmt) == data, f"{name} {fmt}: the plan alone exports otherwise"
        parts = (torchtitan_parts(name, plan, profile) if fmt == "torchtitan"
                 else deepspeed_parts(spec.model, data))
        notes = " ".join(data["notes"])
        # DeepSpeed's layers hold the modules they name, nothing on the way: a parameter set
        # directly on a module that encloses layers (XLNet's transformer.mask_emb, BLIP-2's
        # model.query_tokens) is in none, and a note says so
        noted = {q for q in everything if f"set directly on {q.rpartition('.')[0]}," in notes
                 or f"{q} is a parameter of the model itself" in notes}
        lost = everything - set().union(*parts) - noted
        assert not lost, f"{name} {fmt}: in no part, and no note says so: {sorted(lost)[:3]}"
        for s, got in enumerate(parts):
            lacks = want[s] - unread - roots - noted - got
            assert not lacks, f"{name} {fmt} part {s} lacks {sorted(lacks)[:3]}"
        for param, k in Counter(q for got in parts for q in got if q not in roots).items():
            idle = [s for s, got in enumerate(parts) if param in got and param not in want[s] - unread]
            if k > 1 and idle:
                assert param in notes, f"{name} {fmt}: parts {idle} keep {param} unread, and no note says so"


@pytest.mark.parametrize("name", sorted(DEFECTS))
def test_every_parameter_lands_in_a_part(name: str) -> None:
    """The zoo models where the sweep of 2026-12-07 found a parameter in no part (ESM,
    T5Gemma2, Decision Transformer, Wav2Vec2-Conformer), copies no note named (T5Gemma2,
    XLNet), holders DeepSpeed's layers lacked (DeBERTa, MLlama) or that enclose layers
    (BLIP-2; LayoutLMv3's ``layoutlmv3`` also stood for the ``encoder.rel_pos_bias`` tables
    under it, which stage 0 reads and DeepSpeed's holders then lacked; HRM's ``model``, for its
    ``z_L_init``, stood for the low-level layer whose no-grad cycle stage 0 runs), and some that
    had none."""
    assert_every_parameter_in_a_part(name, DEFECTS[name])


def test_esm_contact_head_goes_with_the_last_part() -> None:
    """ESM's masked-LM forward never calls ``contact_head``: no unit holds it, so torchtitan's
    split dropped it from every part and a checkpoint of the parts lacked its weights (the
    sweep of 2026-12-07). The plan prices it on the last stage, whose part now keeps it."""
    profile = profiled("esm")[1]
    plan = planned("esm")
    data = export_plan(plan, "torchtitan", profile)
    parts = data["parallelism"]["module_fqns_per_model_part"]
    assert parts[-1][-1] == "esm.contact_head" and all("esm.contact_head" not in p for p in parts[:-1])
    assert [n for n in data["notes"] if n.startswith("no node of the plan reads the parameters of "
                                                     "esm.contact_head")]
    ds = export_plan(plan, "deepspeed", profile)
    assert ds["layers"][-1][-1] == "esm.contact_head" and ds["parts"][-1] == len(ds["layers"])
    assert export_plan(plan, "torchtitan") == data  # the plan alone says so since 2026-12-08


def test_a_plan_without_its_parameters_recorded_is_noted() -> None:
    """A plan made before its layer record named the parameters each stage reads cannot say
    that ESM's ``contact_head`` lies in no part: exported without the profile, its parts lack
    it, and a note says so and how to fix it; with the profile they hold it."""
    profile = profiled("esm")[1]
    plan = planned("esm")
    older = _without_params(plan)
    for fmt in ("torchtitan", "deepspeed"):
        data = export_plan(older, fmt)
        assert "esm.contact_head" not in str(data["parallelism" if fmt == "torchtitan" else "layers"])
        assert UNRECORDED in data["notes"]
        assert export_plan(older, fmt, profile) == export_plan(plan, fmt)
    assert UNRECORDED not in export_plan(older, "megatron")["notes"]  # Megatron's layers hold no modules


def _without_params(plan: Plan) -> Plan:
    info = {k: v for k, v in plan.options["granularity"].items() if k != "params"}
    return dataclasses.replace(plan, options={**plan.options, "granularity": info})


def test_the_plan_records_what_each_stage_reads() -> None:
    """The record names every parameter once (canonical names), the tied groups, and per stage
    the canonical names its nodes read: GPT-NeoX in 2 stages, from its profile."""
    profile = profiled("gpt-neox")[1]
    plan = planned("gpt-neox")
    record = plan.options["granularity"]["params"]
    assert record["names"] == list(profile.params) and record["tied"] == [list(g) for g in profile.tied]
    by = profile.by_name
    for s, stage in enumerate(plan.stages):
        want = {q for n in stage.nodes if by[n].op != "output" for q in (*by[n].params, *by[n].shared_params)}
        assert set(record["reads"][s]) == want and len(record["reads"][s]) == len(want)
    assert set().union(*map(set, record["reads"])) <= set(record["names"])


@pytest.mark.parametrize("edit, message", [
    (lambda r: {**r, "reads": r["reads"][:1]}, "lists the reads of 1 stages, but the plan has 2"),
    (lambda r: {**r, "reads": [[*r["reads"][0], "nowhere.weight"], r["reads"][1]]},
     "names nowhere.weight, none of its parameters"),
    (lambda r: {k: v for k, v in r.items() if k != "tied"}, "malformed"),
    (lambda r: {**r, "reads": 3}, "malformed"),
])
def test_a_malformed_record_of_parameters_is_refused(edit: Callable[[dict[str, Any]], Any], message: str) -> None:
    plan = planned("gpt-neox")
    info = plan.options["granularity"]
    edited = dataclasses.replace(plan, options={**plan.options, "granularity": {**info, "params": edit(info["params"])}})
    with pytest.raises(ExportError, match=message) as e:
        export_plan(edited, "torchtitan")
    assert "--profile" in str(e.value.hint)


def test_t5gemma2_names_the_tied_alias_a_part_keeps_unread() -> None:
    """T5Gemma2's decoder embedding carries ``eoi_embedding``, one Parameter with the encoder's,
    which only the encoder reads (for image tokens). In 4 stages, part 1 lists the decoder
    embedding (its stage runs it) and so keeps that alias: a copy that never trains, saved
    beside stage 0's trained one. A part cannot list less than a module; the note names it."""
    spec, profile = profiled("t5gemma2")
    plan = planned("t5gemma2", 4)
    alias = "model.model.decoder.embed_tokens.eoi_embedding"
    parts = export_plan(plan, "torchtitan", profile)["parallelism"]["module_fqns_per_model_part"]
    assert "model.model.decoder.embed_tokens" in parts[1]
    assert alias in {n for n, _ in split_module(spec.model, parts[1]).named_parameters(remove_duplicate=False)}
    notes = export_plan(plan, "torchtitan", profile)["notes"]
    assert [n for n in notes if n.startswith(f"torchtitan's part 1 keeps {alias} (one Parameter with "
                                             f"model.model.encoder.text_model.embed_tokens.eoi_embedding), "
                                             f"which only stage 0 reads")]
    two = export_plan(planned("t5gemma2", 2), "torchtitan", profile)["notes"]
    assert not [n for n in two if alias in n]  # with the encoder's embedding in part 0: no copy apart


def test_deepspeed_lists_the_holders_its_layers_read() -> None:
    """DeBERTa's layers read ``encoder.rel_embeddings``, a module never called: torchtitan's
    parts listed it, DeepSpeed's layer list did not (until 2026-12-07), so a PipelineModule
    built from it lacked the table. It is now each stage's holder, with a note."""
    plan = planned("deberta")
    ds = export_plan(plan, "deepspeed")
    assert ds["holders"] == [["deberta.encoder.rel_embeddings"]] * 2
    assert [n for n in ds["notes"] if n.startswith("the layers of stages 0 and 1 read parameters of "
                                                   "deberta.encoder.rel_embeddings") and "TiedLayerSpec" in n]
    assert export_plan(planned("gpt-neox"), "deepspeed")["holders"] == [[], []]


def test_deepspeed_names_no_holder_that_encloses_layers() -> None:
    """BLIP-2's ``query_tokens`` is set on ``model`` itself, which encloses every layer: as a
    DeepSpeed holder of stage 0 it would bring the whole model into that stage. DeepSpeed's
    export leaves it out of ``holders`` and says to hold the parameter in a module of the
    stage's layers; torchtitan's (which refused the plan until 2026-12-08) lists the modules
    inside ``model`` and keeps ``query_tokens`` with them, as its split does."""
    plan = planned("blip2")
    tt = export_plan(plan, "torchtitan")
    assert "model" not in tt["parallelism"]["module_fqns_per_model_part"][0]
    assert [n for n in tt["notes"] if n.startswith("stage 0 reads parameters set directly on model, which "
                                                   "encloses other stages' layers")]
    ds = export_plan(plan, "deepspeed")
    assert "model" in plan.options["granularity"]["holders"][0] and ds["holders"] == [[], []]
    assert [n for n in ds["notes"] if n.startswith("stage 0 reads a parameter set directly on model, "
                                                   "which encloses layers")]


def test_kept_follows_torchtitans_split() -> None:
    """``kept`` says what ``split_module`` keeps: whatever lies under a listed module, and with
    containers what is set directly on a module on the way to one (or on the model itself)."""
    params = ["a.w", "a.b.w", "a.c.w", "d.w", "r"]
    assert kept(["a.b"], params, containers=True) == {"a.w", "a.b.w", "r"}
    assert kept(["a.b"], params, containers=False) == {"a.b.w"}
    assert kept(["a", "d"], params, containers=False) == {"a.w", "a.b.w", "a.c.w", "d.w"}


def test_a_tied_alias_in_no_part_adds_nothing() -> None:
    """A Parameter is held where any of its names is: a second name of a held weight under a
    module no part lists adds no module (it would bring that module into the last part), while
    a parameter that no name of which is held does. GPT-NeoX's profile, given a second name of
    its first layer's weight under ``ghost`` and an unread ``lost.weight`` (the output node owns
    what no node reads)."""
    profile = profiled("gpt-neox")[1]
    plan = planned("gpt-neox")
    first = next(q for n in profile.nodes for q in n.params if ".layers.0." in q)
    out = profile.nodes[-1]
    assert out.op == "output"
    edited = dataclasses.replace(
        profile, tied=(*profile.tied, (first, "ghost.weight")), params={**profile.params, "lost.weight": 4},
        nodes=(*profile.nodes[:-1], dataclasses.replace(out, params=(*out.params, "lost.weight"))))
    parts = export_plan(plan, "torchtitan", edited)["parallelism"]["module_fqns_per_model_part"]
    assert parts[-1][-1] == "lost" and "ghost" not in [m for p in parts for m in p]


def test_a_profile_of_another_model_is_refused() -> None:
    with pytest.raises(ExportError, match="the profile is of another model") as e:
        export_plan(planned("esm"), "torchtitan", profiled("gpt-neox")[1])
    assert "--profile" in str(e.value.hint)


@pytest.mark.slow
@pytest.mark.parametrize("stages", [2, 4])
def test_the_zoo_sweep(stages: int) -> None:
    """Every zoo model that plans layer-granular in ``stages`` stages from an estimate exports
    to each format or is refused with an ExportError, and every parameter lands in a part
    (a few minutes for each stage count on two cores)."""
    failed = []
    for name in zoo.ZOO:
        try:
            plan = planned(name, stages)
        except AutopipeError:  # too few layers, a loss that reads values on meta tensors
            continue
        try:
            with contextlib.suppress(ExportError):  # refused with a message, or written
                export_plan(plan, "megatron", profiled(name)[1])
            assert_every_parameter_in_a_part(name, stages)
        except AssertionError as e:
            failed.append(str(e).splitlines()[0])
    assert not failed, "\n".join(failed)
