"""Tests for autopipe/export on Hugging Face models of the zoo (tests/zoo.py) that nobody here
wrote: each defect the export sweep of 2026-12-07 found, planned layer-granular from an
estimated profile (the same cuts every run), and held to what a user of each engine expects.
"""

from __future__ import annotations

import dataclasses
import re
from functools import cache
from pathlib import Path

import pytest

import autopipe
from autopipe.cli.main import main
from autopipe.errors import ExportError
from autopipe.export import export_plan
from autopipe.partition.planner import plan_profile
from autopipe.plan_format import Plan
from autopipe.profile.estimate import estimate
from autopipe.profile.profile import Profile
from autopipe.spec import ModelSpec, example_target
from tests import zoo
from tests.test_export import canonical, split_module, stage_params


@cache
def profiled(name: str) -> tuple[ModelSpec, Profile]:
    """Zoo model ``name`` and its estimated profile (H100), once per test process."""
    spec = zoo.ZOO[name]()
    graph = autopipe.trace(spec.model, spec.example_inputs, spec.example_kwargs)
    profile = estimate(graph, spec.example_inputs, spec.example_kwargs, progress=False,
                       loss_fn=spec.loss_fn, target=example_target(spec))
    return spec, profile


@cache
def planned(name: str, stages: int = 2, cut_at: str | None = None) -> Plan:
    """``name`` planned layer-granular (or between ``cut_at``) into ``stages`` stages."""
    return plan_profile(profiled(name)[1], num_stages=stages, microbatches=2 * stages,
                        granularity="layer", cut_at=cut_at, time_limit=30)


def assert_torchtitan_splits_into_the_plan(name: str, plan: Plan) -> None:
    """torchtitan's parts, split as its ``_split_module`` does, hold each stage's parameters."""
    spec, profile = profiled(name)
    names, want = canonical(spec.model), stage_params(plan, profile)
    parts = export_plan(plan, "torchtitan")["parallelism"]["module_fqns_per_model_part"]
    for s, fqns in enumerate(parts):
        got = {names[n] for n, _ in split_module(spec.model, fqns).named_parameters(remove_duplicate=False)}
        assert got == want[s], f"stage {s}: extra {sorted(got - want[s])[:3]}, missing {sorted(want[s] - got)[:3]}"


def test_megatron_refuses_one_layer_stacks_left_inside_e_or_l() -> None:
    """A Speech2Text of one encoder and one decoder layer: its only list of two blocks is the
    conv subsampler's, so the layers are its two convs and the transformer runs whole after
    them. Megatron-LM was given ``Ett|L`` (until 2026-12-07), the encoder-decoder inside L,
    which it reads as the output layer and loss ([Note: which lists are uncut stacks])."""
    plan = planned("speech2text")
    info = plan.options["granularity"]
    assert info["lists"] == ["model.model.encoder.conv.conv_layers"]
    assert info["uncut"] == [["model.model.encoder.layers", 1], ["model.model.decoder.layers", 1]]
    with pytest.raises(ExportError, match=r"model\.model\.encoder\.layers \(1 block\), "
                                          r"model\.model\.decoder\.layers \(1 block\) run before "
                                          r"or after them, inside E or L"):
        export_plan(plan, "megatron")
    assert_torchtitan_splits_into_the_plan("speech2text", plan)
    ds = export_plan(plan, "deepspeed")  # the two convs; the transformer after them
    assert ds["parts"] == [0, 2, 3] and "model.model.encoder.layers" in ds["layers"][-1]


def test_megatron_refuses_a_one_layer_encoder_left_inside_e() -> None:
    """A BART of one layer per stack cut at its decoder alone: its encoder, a stack of one
    layer, runs inside E; Megatron-LM was given ``Et|L`` for it (until 2026-12-07)."""
    plan = planned("bart", cut_at="model.model.decoder.layers.*")
    assert plan.options["granularity"]["uncut"] == [["model.model.encoder.layers", 1]]
    with pytest.raises(ExportError, match=r"model\.model\.encoder\.layers \(1 block\) runs before"):
        export_plan(plan, "megatron")
    assert planned("bart").options["granularity"]["uncut"] == []  # both stacks cut between


@pytest.mark.parametrize("name,head", [("resnet", "classifier"), ("git", "model.git.visual_projection.visual_projection")])
def test_a_sequential_head_is_no_stack_left_uncut(name: str, head: str) -> None:
    """ResNet's ``classifier`` (``Flatten``, ``Linear``) and GIT's ``visual_projection``
    (``Linear``, ``LayerNorm``) are numbered, but no stack of blocks: Megatron-LM's refusal of
    a ResNet said ``classifier (2 blocks) runs before or after them, inside E or L`` (until
    2026-12-07); it now says what it refuses for (ResNet's stages are not built alike)."""
    plan = planned(name)
    assert plan.options["granularity"]["uncut"] == []
    with pytest.raises(ExportError) as e:
        export_plan(plan, "megatron")
    assert head not in e.value.message
    assert_torchtitan_splits_into_the_plan(name, plan)


def test_a_layer_run_several_times_is_no_megatron_layer_and_several_deepspeed_entries() -> None:
    """ALBERT runs its one layer group once per hidden layer (2 here), its weights shared.
    Megatron-LM was given ``--num-layers 1`` and ``Et|L`` and DeepSpeed's layer list ran the
    group once (until 2026-12-07): a model of half the depth ([Note: a layer run several
    times] in autopipe/partition/layers.py)."""
    plan = planned("albert")
    group = "albert.encoder.albert_layer_groups.0"
    info = plan.options["granularity"]
    assert info["lists"] == ["albert.encoder.albert_layer_groups"] and info["runs"] == [1, 1]
    with pytest.raises(ExportError, match=rf"\({group} runs 2 times\): --num-layers 1 would build "
                                          r"1 layer where the model runs 2") as e:
        export_plan(plan, "megatron")
    assert "--format torchtitan" in str(e.value.hint) and "only" not in str(e.value.hint)  # both take it
    ds = export_plan(plan, "deepspeed")
    assert [entry for entry in ds["layers"] if group in entry] == [[group], [group]]
    assert ds["parts"][-1] == len(ds["layers"])
    assert_torchtitan_splits_into_the_plan("albert", plan)
    for name in ("bart", "resnet"):  # a layer of its own weights runs once: no record
        assert "runs" not in planned(name).options["granularity"]


def test_deepspeed_lists_alternating_runs_in_the_order_they_come() -> None:
    """HRM-Text runs its low-level layer and its high-level layer in alternating cycles:
    DeepSpeed's layer list named each once (until 2026-12-07), a model of two layers where
    the plan priced five runs; it now gives each run, in the model's order."""
    plan = planned("hrm-text")
    low, high = "model.L_module.layers.0", "model.H_module.layers.0"
    assert plan.options["granularity"]["runs"] == [1, 2, 1, 1, 2]
    ds = export_plan(plan, "deepspeed")
    assert [e[0] for e in ds["layers"] if e[0] in (low, high)] == [low, high, low, low, high]
    assert ds["parts"][-1] == len(ds["layers"])


def test_a_plan_cut_inside_a_layer_names_where() -> None:
    """T5 planned anywhere in 2 stages may cut inside decoder block 0's first layer norm: then
    only stage 1 lists parts of the block (stage 0 runs the rest inside modules cut between
    the two), and the refusal said "split across stages (stage 1: …)", one stage (until
    2026-12-07); it now says where the rest of the block runs. The stages' module lists are
    written here as that plan's were (which cut the solver picks varies with its time)."""
    plan = planned("t5")
    options = {k: v for k, v in plan.options.items() if k != "granularity"}
    block = "t5.decoder.block.0"
    first = dataclasses.replace(plan.stages[0], modules=("t5.encoder", "t5.decoder.embed_tokens"))
    last = dataclasses.replace(plan.stages[1], modules=(f"{block}.layer.0.SelfAttention.q", f"{block}.layer.1",
                                                        f"{block}.layer.2", "t5.decoder.final_layer_norm", "lm_head"))
    cut = dataclasses.replace(plan, stages=(first, last), options=options)
    with pytest.raises(ExportError, match=rf"the plan cuts inside a layer: {re.escape(block)} is split "
                                          rf"across stages \(stage 1: {re.escape(block)}\.layer\.0\.SelfAttention\.q, "
                                          r".*; the rest of it runs in modules the plan cuts between stage 1 "
                                          r"and another\)") as e:
        export_plan(cut, "torchtitan")
    assert "--granularity layer" in str(e.value.hint)
    both = dataclasses.replace(cut, stages=(dataclasses.replace(first, modules=(*first.modules, f"{block}.layer.0.layer_norm")), last))
    with pytest.raises(ExportError, match=r"\(stage 0: .*; stage 1: .*\); torchtitan"):  # two stages name it
        export_plan(both, "torchtitan")


@pytest.mark.parametrize("fmt,code", [("torchtitan", 0), ("deepspeed", 0), ("megatron", 2)])
def test_the_cli_exports_or_refuses_a_zoo_plan(fmt: str, code: int, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """`autopipe export` of the ALBERT plan: two formats write it, Megatron-LM refuses it
    with exit 2, a one-line error and a hint, never a traceback."""
    path = tmp_path / "albert.json"
    planned("albert").save(path)
    assert main(["export", str(path), "--format", fmt, "-o", str(tmp_path / "out.json")]) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if code:
        assert "error: Megatron-LM's layers each hold their own weights" in err and "hint:" in err
        assert not (tmp_path / "out.json").exists()
    else:
        assert f"wrote {tmp_path / 'out.json'}: {fmt}, 2 stages, layers per stage 1 | 0" in err


def test_megatron_does_not_send_a_hybrid_back_to_its_own_blocks() -> None:
    """Jamba's ``model.layers`` mixes Mamba and attention layers, not built alike: Megatron-LM's
    refusal hinted "plan it again with --cut-at naming the blocks of one stack
    ('model.layers.*')", the pattern it had just refused (until 2026-12-07)."""
    plan = planned("jamba")
    assert plan.options["granularity"]["pattern"] == "model.layers.*"
    with pytest.raises(ExportError, match="are blocks of model.layers that are not built alike") as e:
        export_plan(plan, "megatron")
    hint = str(e.value.hint)
    assert "'model.layers.*'" not in hint and "found these (model.layers)" in hint
    assert "--format torchtitan or deepspeed" in hint


def test_torchtitan_and_deepspeed_are_told_of_a_part_without_parameters() -> None:
    """Speech2Text in 4 stages: 4 units, the first its inputs alone, so stage 0 holds no
    parameter; torchtitan's and DeepSpeed's optimizer for that part would raise 'optimizer got
    an empty parameter list', and the exports said nothing ([Note: a part without parameters]). The
    chain DP: the ILP's unrestricted solve of 4 stages takes a minute here."""
    plan = plan_profile(profiled("speech2text")[1], num_stages=4, microbatches=8, granularity="layer",
                        method="dp")
    assert plan.stages[0].memory.params == 0 and all(s.memory.params for s in plan.stages[1:])
    data = export_plan(plan, "torchtitan")
    assert data["parallelism"]["module_fqns_per_model_part"][0] == []
    assert [n for n in data["notes"] if n.startswith("stage 0 of the plan holds no parameter, and "
                                                     "torchtitan builds an optimizer per model part")
            and "plan it with 3 stages" in n]
    ds = export_plan(plan, "deepspeed")
    assert ds["parts"][:2] == [0, 0] and [n for n in ds["notes"] if n.startswith("stage 0 of the plan holds no parameter")]
    for fmt in ("torchtitan", "deepspeed"):
        assert not [n for n in export_plan(planned("speech2text"), fmt)["notes"] if "no parameter" in n]


def test_a_stack_of_unlike_blocks_left_inside_e_is_named() -> None:
    """A hybrid stack (Jamba's Mamba and attention blocks, each with its residual add at the
    block's own level) is no list built alike, but a stack of blocks all the same: cut at the
    other stack alone, it runs inside E, and Megatron-LM's refusal names it ([Note: which lists
    are uncut stacks]). Synthetic: ``enc.0`` and ``enc.1`` unlike, then ``dec.0`` and ``dec.1``."""
    from tests.test_partition_layers import layered_profile

    base = layered_profile(0)  # 4 layers h.<i> of 2 nodes each, no glue
    nodes = []
    for n in base.nodes:
        if n.module.startswith("h."):
            i, first = int(n.module.split(".")[1]), int(n.name[1:]) % 2 == 1
            if i < 2:
                module = f"enc.{i}.{('mamba', 'attn')[i]}" if first else f"enc.{i}"
                n = dataclasses.replace(n, module=module, target=f"op{i}" if first else "add")
            else:
                n = dataclasses.replace(n, module=f"dec.{i - 2}.op", target="op")
        nodes.append(dataclasses.replace(n, params=(), shared_params=(), param_bytes=0))
    profile = dataclasses.replace(base, nodes=tuple(nodes), params={}, tied=())
    plan = plan_profile(profile, num_stages=2, microbatches=4, cut_at="dec.*", time_limit=30)
    assert plan.options["granularity"]["uncut"] == [["enc", 2]]
    with pytest.raises(ExportError, match=r"enc \(2 blocks\) runs before or after them"):
        export_plan(plan, "megatron")
