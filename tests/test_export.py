"""Tests for autopipe/export: the exported stages, applied to the real models, are the plan's.

Layer-granular plans of the GPT-2 (tied embeddings) and Llama examples are exported;
the torchtitan FQN lists split the model the way torchtitan's ``_split_module`` does,
and every stage must then hold exactly the parameters the plan's nodes read. The
DeepSpeed parts and the Megatron layer counts are checked against the layers each
stage's nodes run, read from the profile, not from the export.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from functools import cache
from pathlib import Path

import pytest
import torch
from torch import nn

from autopipe.cli.main import main
from autopipe.errors import ExportError
from autopipe.export import FORMATS, SCHEMA, export_plan
from autopipe.export.megatron import layout
from autopipe.partition.planner import plan_profile
from autopipe.plan_format import DataParallel, Plan
from autopipe.profile.profile import Profile
from tests.conftest import ROOT, example_spec

CASES = {"gpt2": ("transformer.h", 4), "llama": ("model.layers", 3), "gpt2-2": ("transformer.h", 2)}
"""Case → (the layer list, stages)."""


@cache
def planned(case: str) -> tuple[Plan, Profile]:
    name = case.split("-")[0]
    profile = Profile.load(ROOT / "profiles" / "cpu" / f"{name}.json")
    plan = plan_profile(profile, num_stages=CASES[case][1], microbatches=8, granularity="layer",
                        time_limit=30)
    return plan, profile


def split_module(whole: nn.Module, fqns: list[str]) -> nn.Module:
    """torchtitan's ``_split_module``, for nested paths: a deep copy that keeps the listed
    modules and drops every other child on the way to them (dropped entries of a
    ModuleList become None, so the kept parameters keep their original names)."""
    model = copy.deepcopy(whole)
    keep = set(fqns)

    def prune(module: nn.Module, prefix: str) -> None:
        for name, child in list(module.named_children()):
            path = prefix + name
            if path in keep:
                continue
            if any(k.startswith(path + ".") for k in keep):
                prune(child, path + ".")
            else:
                setattr(module, name, None)

    prune(model, "")
    return model


def canonical(model: nn.Module) -> dict[str, str]:
    """Every parameter name (tied aliases too) → the first name of its Parameter."""
    first: dict[int, str] = {}
    out = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        out[name] = first.setdefault(id(p), name)
    return out


def stage_params(plan: Plan, profile: Profile) -> list[set[str]]:
    """Per stage, the parameters its nodes read (owned or tied), from the profile."""
    by = profile.by_name
    return [{q for n in s.nodes for q in (*by[n].params, *by[n].shared_params)} for s in plan.stages]


def stage_layers(plan: Plan, profile: Profile, layers: str) -> list[list[int]]:
    """Per stage, the layers its nodes run in (each layer must lie in one stage)."""
    rx = re.compile(re.escape(layers) + r"\.(\d+)(\.|$)")
    out: list[list[int]] = []
    seen: dict[int, int] = {}
    for s in plan.stages:
        mine = sorted({int(m.group(1)) for n in s.nodes
                       if (m := rx.match(profile.by_name[n].module))})
        for i in mine:
            assert seen.setdefault(i, s.index) == s.index, f"layer {i} in stages {seen[i]} and {s.index}"
        out.append(mine)
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_torchtitan_fqns_split_the_model_into_the_plans_stages(case: str) -> None:
    plan, profile = planned(case)
    spec = example_spec(case.split("-")[0])
    data = export_plan(plan, "torchtitan")
    assert data["schema"] == SCHEMA and data["format"] == "torchtitan"
    par = data["parallelism"]
    assert par["pipeline_parallel_degree"] == plan.num_stages
    assert par["pipeline_parallel_schedule"] == "1F1B" and par["num_pp_microbatches"] == 8
    parts = par["module_fqns_per_model_part"]
    assert len(parts) == plan.num_stages
    names = canonical(spec.model)
    want = stage_params(plan, profile)
    held: set[str] = set()
    for s, fqns in enumerate(parts):
        stage = split_module(spec.model, fqns)
        got = {names[n] for n, _ in stage.named_parameters(remove_duplicate=False)}
        assert got == want[s], f"stage {s}: extra {sorted(got - want[s])[:3]}, missing {sorted(want[s] - got)[:3]}"
        held |= got
        for module in plan.stages[s].modules:  # the plan's whole modules are in this part
            assert stage.get_submodule(module) is not None
    assert held == set(names.values())  # every parameter somewhere


@pytest.mark.parametrize("case", sorted(CASES))
def test_deepspeed_parts_and_megatron_counts_are_the_plans_layers(case: str) -> None:
    plan, profile = planned(case)
    layers, _ = CASES[case]
    per_stage = stage_layers(plan, profile, layers)
    counts = [len(x) for x in per_stage]
    assert sum(counts) == plan.options["granularity"]["layers"]

    ds = export_plan(plan, "deepspeed")
    parts, items = ds["parts"], ds["layers"]
    assert ds["num_stages"] == plan.num_stages and parts[0] == 0 and parts[-1] == len(items)
    assert parts == sorted(parts) and len(parts) == plan.num_stages + 1
    for s, mine in enumerate(per_stage):  # DeepSpeed: stage s runs items parts[s] .. parts[s+1]-1
        run = [m for item in items[parts[s]:parts[s + 1]] for m in item]
        assert [m for m in run if m.startswith(layers + ".")] == [f"{layers}.{i}" for i in mine]
    assert items[0] == list(plan.stages[0].modules)[:len(items[0])]  # embeddings first
    assert items[-1][-1] == "lm_head"

    mg = export_plan(plan, "megatron")
    assert mg["layers_per_stage"] == counts and mg["num_layers"] == sum(counts)
    # [Note: an output layer of its own]: Megatron-LM ties them unless told; Llama's head is its own
    untie = "--untie-embeddings-and-output-weights"
    assert (untie in mg["args"]) == (case == "llama") and plan.options["granularity"]["tied_ends"] == (case != "llama")
    assert untie not in mg.get("uneven_args", []) or case == "llama"
    older = dataclasses.replace(plan, options={**plan.options, "granularity": {
        k: v for k, v in plan.options["granularity"].items() if k != "tied_ends"}})
    mg_older = export_plan(older, "megatron")
    assert untie not in mg_older["args"] and any("ties its embedding" in n for n in mg_older["notes"])
    parsed = megatron_layout(mg["pipeline_model_parallel_layout"])
    assert [st.count("t") for st in parsed] == counts
    assert parsed[0][0] == "E" and parsed[-1][-1] == "L" and "".join(parsed).count("E") == 1
    args = mg["args"]
    assert args[args.index("--pipeline-model-parallel-size") + 1] == str(plan.num_stages)
    if "uneven_args" in mg:
        u = mg["uneven_args"]
        first = int(u[u.index("--decoder-first-pipeline-num-layers") + 1])
        last = int(u[u.index("--decoder-last-pipeline-num-layers") + 1])
        assert (first, last) == (counts[0], counts[-1]) and len(set(counts[1:-1])) <= 1


@cache
def recomputing() -> tuple[Plan, Profile]:
    """A layer-granular Llama plan of 2 stages under a memory limit that only recomputation meets."""
    profile = Profile.load(ROOT / "profiles" / "cpu" / "llama.json")
    free = plan_profile(profile, num_stages=2, microbatches=8, granularity="layer", time_limit=30)
    # 0.81-0.84 of the free plan's peak recomputes (2026-12-04): below, no split fits even
    # recomputing; above, none needs to
    limit = int(0.82 * max(s.memory.total for s in free.stages))
    return plan_profile(profile, num_stages=2, microbatches=8, granularity="layer", time_limit=30,
                        memory_limit=limit), profile


def test_a_plan_that_recomputes_exports_the_settings_that_cover_it() -> None:
    plan, profile = recomputing()
    assert plan.recomputes
    rx = re.compile(r"model\.layers\.(\d+)(\.|$)")
    want = [sorted({int(m.group(1)) for g in s.recompute for n in g
                    if (m := rx.match(profile.by_name[n].module))}) for s in plan.stages]
    counts = [len(w) for w in want]
    assert max(counts) > 0
    exports = {f: export_plan(plan, f) for f in FORMATS}
    for data in exports.values():  # which layers each stage recomputes, from the profile's modules
        assert data["plan"]["recompute"] == [[f"model.layers.{i}" for i in w] for w in want]
    assert exports["torchtitan"]["activation_checkpoint"] == "full"
    assert exports["deepspeed"]["activation_checkpoint_interval"] == 1
    mg = exports["megatron"]
    args = mg["args"]
    assert args[args.index("--recompute-method") + 1] == "block"
    assert args[args.index("--recompute-num-layers") + 1] == str(max(counts)) == str(mg["recompute_num_layers"])
    layers = exports["torchtitan"]["plan"]["layers_per_stage"]
    if layers != counts:  # full recomputation does more than the plan: each export says so
        for data in exports.values():
            assert any("take longer than the plan predicts" in n for n in data["notes"])

    info = plan.options["granularity"]
    older = dataclasses.replace(plan, options={**plan.options, "granularity": {
        k: v for k, v in info.items() if k != "recompute_units"}})
    with pytest.raises(ExportError, match="recomputes activations, but its layer record does not say"):
        export_plan(older, "megatron")


def test_the_cli_prints_the_notes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan, _ = recomputing()
    plan.save(tmp_path / "plan.json")
    assert main(["export", str(tmp_path / "plan.json"), "--format", "torchtitan", "-o", str(tmp_path / "t.json")]) == 0
    err = capsys.readouterr().err
    notes = json.loads((tmp_path / "t.json").read_text())["notes"]
    assert notes  # full recomputation does more than this plan
    assert [f"note: {n}" for n in notes] == [ln for ln in err.splitlines() if ln.startswith("note: ")]


def test_a_plan_that_recomputes_nothing_turns_the_engines_recomputation_off() -> None:
    plan, _ = planned("llama")
    assert not plan.recomputes
    tt, ds, mg = (export_plan(plan, f) for f in ("torchtitan", "deepspeed", "megatron"))
    assert tt["activation_checkpoint"] == "none" and ds["activation_checkpoint_interval"] == 0
    assert "--recompute-granularity" not in mg["args"] and "recompute_num_layers" not in mg
    assert tt["plan"]["recompute"] is None and tt["notes"] == ds["notes"] == mg["notes"] == []


def torchtitan_stage_ids(pp_rank: int, pp_degree: int, schedule: str, num_stages: int) -> tuple[int, ...]:
    """torchtitan's ``stage_ids_this_rank``: the model parts one pipeline rank builds."""
    per_rank = num_stages // pp_degree
    if schedule in ("ZBVZeroBubble", "DualPipeV"):
        pairs = list(zip(range(pp_degree), range(num_stages - 1, pp_degree - 1, -1)))
        return tuple(pairs[pp_rank])
    return tuple(pp_rank + s * pp_degree for s in range(per_rank))


@cache
def chunked(schedule: str) -> Plan:
    """A layer-granular GPT-2 plan of 2 ranks with 2 stages each."""
    profile = Profile.load(ROOT / "profiles" / "cpu" / "gpt2.json")
    return plan_profile(profile, num_stages=2, microbatches=8, granularity="layer", schedule=schedule,
                        virtual_stages=2 if schedule == "interleaved-1f1b" else None, time_limit=30)


@pytest.mark.parametrize("schedule", ["interleaved-1f1b", "zbv", "dualpipev"])
def test_several_stages_per_rank_go_where_the_plan_puts_them(schedule: str) -> None:
    plan = chunked(schedule)
    assert plan.num_stages == 4
    mine = {r: sorted(s.index for s in plan.stages if s.rank == r) for r in range(2)}
    tt = export_plan(plan, "torchtitan")
    par = tt["parallelism"]
    assert par["pipeline_parallel_degree"] == 2 and len(par["module_fqns_per_model_part"]) == 4
    assert tt["plan"]["pipeline_ranks"] == 2 and tt["plan"]["stage_ranks"] == [s.rank for s in plan.stages]
    for r in range(2):  # torchtitan builds, on each rank, the parts the plan put there
        assert sorted(torchtitan_stage_ids(r, 2, par["pipeline_parallel_schedule"], 4)) == mine[r]
    with pytest.raises(ExportError, match="one stage per rank.*4 stages on 2 ranks"):
        export_plan(plan, "deepspeed")
    if schedule != "interleaved-1f1b":
        with pytest.raises(ExportError, match=r"Megatron-LM puts stage s on rank s mod P: ranks \[0, 1, 0, 1\]"):
            export_plan(plan, "megatron")
        return
    mg = export_plan(plan, "megatron")
    assert mg["pipeline_model_parallel_size"] == 2 and mg["virtual_pipeline_model_parallel_size"] == 2
    assert "uneven_args" not in mg
    parsed = megatron_layout(mg["pipeline_model_parallel_layout"])
    assert len(parsed) == 4  # Megatron: layout stage v·P + r on rank r
    assert {r: sorted(v * 2 + r for v in range(len(parsed) // 2)) for r in range(2)} == mine


def test_data_parallel_replicas_are_whole_replicas_in_torchtitan() -> None:
    plan, _ = planned("gpt2-2")
    dp = DataParallel(degree=2, ranks=((0, 2), (1, 3)), batch_size=16)
    par = export_plan(dataclasses.replace(plan, data_parallel=dp), "torchtitan")["parallelism"]
    assert (par["pipeline_parallel_degree"], par["data_parallel_replicate_degree"],
            par["data_parallel_shard_degree"]) == (2, 2, 1)
    assert "data_parallel_replicate_degree" not in export_plan(plan, "torchtitan")["parallelism"]


def test_a_plan_that_shards_its_optimizer_states_exports_zero_1() -> None:
    """[Note: sharded optimizer states in an export]: until 2026-12-07 a --shard-optimizer plan
    exported as if each replica held every state (more memory than it was planned with)."""
    plan, _ = planned("gpt2-2")
    whole = DataParallel(degree=2, ranks=((0, 2), (1, 3)), batch_size=16)
    shard = dataclasses.replace(whole, shard_optimizer=True)
    for dp, zero in ((whole, False), (shard, True)):
        p = dataclasses.replace(plan, data_parallel=dp)
        mg = export_plan(p, "megatron")
        assert ("--use-distributed-optimizer" in mg["args"]) is zero
        if "uneven_args" in mg:
            assert ("--use-distributed-optimizer" in mg["uneven_args"]) is zero
        assert export_plan(p, "deepspeed").get("zero_optimization") == ({"stage": 1} if zero else None)
        notes = export_plan(p, "torchtitan")["notes"]
        assert any("shards the optimizer states over its 2 replicas" in n for n in notes) is zero
    one = dataclasses.replace(plan, data_parallel=dataclasses.replace(shard, degree=1, ranks=((0,), (1,)),
                                                                       batch_size=8))
    assert "--use-distributed-optimizer" not in export_plan(one, "megatron")["args"]  # nothing to shard over


def megatron_layout(text: str) -> list[str]:
    """Megatron-LM's ``PipelineParallelLayerLayout.parse_str_to_list``, as characters per stage."""
    text = text.replace(",", "")
    for pattern in (r"\(([^)]+)\)\*(\d+)", r"(.)\*(\d+)"):
        text = re.sub(pattern, lambda x: x.group(1) * int(x.group(2)), text)
    assert set(text) <= set("ELtm|"), text
    return text.split("|")


@pytest.mark.parametrize("counts,text", [
    ([0, 2, 2, 0], "E|tt|tt|L"), ([1, 3, 3, 1], "Et|t*3|t*3|tL"), ([4], "Et*4L"), ([2, 0, 3], "Ett||t*3L")])
def test_megatron_layout_strings(counts: list[int], text: str) -> None:
    assert layout(counts) == text
    assert [st.count("t") for st in megatron_layout(text)] == counts


def test_the_layouts_the_docs_show_are_the_ones_export_writes() -> None:
    """docs/export.md and ``layout``'s docstring showed ``E|t*2|t*2|L``, which Megatron-LM
    reads as ``E|tt|tt|L`` too, but the export writes ``t*N`` only for N ≥ 3."""
    docs = (ROOT / "docs" / "export.md").read_text() + (layout.__doc__ or "")
    shown = re.findall(r"`(E[Et*\d|]*L)`", docs)
    assert len(shown) >= 3, shown
    for text in shown:
        assert layout([st.count("t") for st in megatron_layout(text)]) == text


def test_megatron_uneven_args_only_where_megatron_takes_them() -> None:
    plan, _ = planned("gpt2")  # E|tt|tt|L: the first and last stages hold no layer
    assert "uneven_args" not in export_plan(plan, "megatron")


def test_refuses_a_plan_that_cuts_inside_a_layer() -> None:
    profile = Profile.load(ROOT / "profiles" / "cpu" / "llama.json")
    plan = plan_profile(profile, num_stages=2, microbatches=8, time_limit=30)
    for fmt in FORMATS:
        with pytest.raises(ExportError, match=r"the plan cuts inside a layer: model\.layers\.\d+ is split") as e:
            export_plan(plan, fmt)
        assert "--granularity layer" in str(e.value.hint)
        assert "--cut-at PATTERN naming the blocks to cut between where it finds no layers" in str(e.value.hint)


def test_refuses_a_record_that_contradicts_the_stages() -> None:
    plan, _ = planned("gpt2")
    info = dict(plan.options["granularity"])
    info["stage_units"] = [[0, 2], [2, 3], [3, 5], [5, 6]]  # the stages hold 0 | 1-2 | 3-4 | 5
    bad = Plan.from_json({**plan.to_json(), "options": {**plan.options, "granularity": info}})
    with pytest.raises(ExportError, match="puts transformer.h.0 in stage 0, but stage 1 holds it"):
        export_plan(bad, "torchtitan")
    info["stage_units"] = [[0, 1], [1, 3], [3, 5]]
    bad = Plan.from_json({**plan.to_json(), "options": {**plan.options, "granularity": info}})
    with pytest.raises(ExportError, match="does not cover its 4 stages"):
        export_plan(bad, "megatron")


def test_unknown_format() -> None:
    plan, _ = planned("gpt2")
    with pytest.raises(ExportError, match="unknown export format 'colossal'"):
        export_plan(plan, "colossal")


def test_megatron_refuses_layers_that_are_no_stack_built_alike() -> None:
    """``--cut-at 'transformer.*'`` cuts GPT-2 between its embeddings, its whole block list and
    its final norm: a plan, which torchtitan's and DeepSpeed's module lists carry exactly, but
    Megatron-LM was told ``--num-layers 5`` and ``Et*4|t|L`` for a GPT-2 of 4 blocks (until
    2026-12-07)."""
    profile = Profile.load(ROOT / "profiles" / "cpu" / "gpt2.json")
    plan = plan_profile(profile, num_stages=3, microbatches=4, cut_at="transformer.*", time_limit=30)
    info = plan.options["granularity"]
    assert info["alike"] is False and info["layers"] == 5
    unlike = (r"the layers this plan cuts between \(5, matched by 'transformer\.\*'\) are not the "
              r"numbered blocks of a module list \(transformer\.wte, transformer\.wpe, "
              r"transformer\.drop, transformer\.h, transformer\.ln_f\)")
    with pytest.raises(ExportError, match="Megatron-LM's pipeline layout counts the transformer "
                                          "layers of one stack, but " + unlike) as e:
        export_plan(plan, "megatron")
    assert "--granularity layer and no --cut-at" in str(e.value.hint)
    assert "--format torchtitan or deepspeed" in str(e.value.hint)
    # a plan from before `alike` was recorded: the units' names tell
    old = {k: v for k, v in info.items() if k != "alike"}
    with pytest.raises(ExportError, match=unlike):
        export_plan(Plan.from_json({**plan.to_json(), "options": {**plan.options, "granularity": old}}),
                    "megatron")
    # torchtitan's parts split the model into the plan's stages; DeepSpeed's layers are the units
    spec = example_spec("gpt2")
    names, want = canonical(spec.model), stage_params(plan, profile)
    parts = export_plan(plan, "torchtitan")["parallelism"]["module_fqns_per_model_part"]
    for s, fqns in enumerate(parts):
        got = {names[n] for n, _ in split_module(spec.model, fqns).named_parameters(remove_duplicate=False)}
        assert got == want[s]
    assert ["transformer.h"] in export_plan(plan, "deepspeed")["layers"]


def test_megatron_refuses_some_blocks_of_a_stack() -> None:
    """``--cut-at 'transformer.h.1'``: one block is the layer, the others lie in the units
    around it; Megatron-LM was told ``--num-layers 1`` and ``Et|L`` (until 2026-12-07)."""
    profile = Profile.load(ROOT / "profiles" / "cpu" / "gpt2.json")
    plan = plan_profile(profile, num_stages=2, microbatches=4, cut_at="transformer.h.1", time_limit=30)
    info = plan.options["granularity"]
    assert info["alike"] is False
    outside = (r"\(1, matched by 'transformer\.h\.1'\) are not all the blocks of transformer\.h "
               r"\(transformer\.h\.0, transformer\.h\.2, transformer\.h\.3 lie outside them\)")
    for record in (info, {k: v for k, v in info.items() if k != "alike"}):  # new and older plans
        with pytest.raises(ExportError, match=outside):
            export_plan(Plan.from_json({**plan.to_json(), "options": {**plan.options, "granularity": record}}),
                        "megatron")


def test_megatron_refuses_blocks_not_built_alike() -> None:
    """A module list whose numbered children run different calls (a ``Sequential`` of unlike
    modules), found as the heaviest list: the hint names --cut-at, not --granularity layer."""
    from tests.test_partition_layers import _stacks, layered_profile

    profile = _stacks(layered_profile(0, layers=5), lambda i: f"h.{i}", lambda i: f"op{i}")
    plan = plan_profile(profile, num_stages=2, microbatches=4, granularity="layer")
    with pytest.raises(ExportError, match=r"are blocks of h that are not built alike \(they run "
                                          r"different calls: h\.0, h\.1, h\.2, h\.3, h\.4\)") as e:
        export_plan(plan, "megatron")
    assert str(e.value.hint).startswith("--granularity layer found these (h): where another module "
                                        "list of the model holds blocks built alike, plan it again "
                                        "with --cut-at naming them")
    for case in CASES:  # the examples' layers are one stack built alike
        assert planned(case)[0].options["granularity"]["alike"] is True


@cache
def encoder_decoder() -> tuple[Plan, Profile, nn.Module]:
    """A T5 with 3 encoder and 4 decoder blocks, estimated, planned layer-granular into 4
    stages: the layers found are both stacks' ([Note: every stack of an encoder-decoder])."""
    from autopipe import trace
    from autopipe.profile.estimate import estimate
    from tests.models import T5Pair

    model = T5Pair(num_layers=3, num_decoder_layers=4)
    x = (torch.randint(0, 64, (2, 8)), torch.randint(0, 64, (2, 8)))
    profile = estimate(trace(model, x), x, progress=False)
    plan = plan_profile(profile, num_stages=4, microbatches=8, granularity="layer", time_limit=30)
    return plan, profile, model


def test_an_encoder_decoder_is_cut_between_the_layers_of_both_stacks() -> None:
    plan, profile, model = encoder_decoder()
    info = plan.options["granularity"]
    stacks = ["t5.encoder.block", "t5.decoder.block"]
    assert info["auto"] and info["lists"] == stacks and info["layers"] == 7
    assert info["pattern"] == r"(?:t5\.encoder\.block|t5\.decoder\.block)\.\d+"
    # each stack's block lies whole in one stage, whichever stack it is in
    for stack in stacks:
        stage_layers(plan, profile, stack)
    names = canonical(model)
    want = stage_params(plan, profile)
    parts = export_plan(plan, "torchtitan")["parallelism"]["module_fqns_per_model_part"]
    for s, fqns in enumerate(parts):
        got = {names[n] for n, _ in split_module(model, fqns).named_parameters(remove_duplicate=False)}
        assert got == want[s], f"stage {s}: extra {sorted(got - want[s])[:3]}, missing {sorted(want[s] - got)[:3]}"
    ds = export_plan(plan, "deepspeed")
    assert len(ds["layers"]) == 9 and len(ds["parts"]) == 5  # inputs, 7 blocks, head
    with pytest.raises(ExportError, match=r"one stack of transformer layers.*2 module lists "
                                          r"\(t5\.encoder\.block, t5\.decoder\.block\)") as e:
        export_plan(plan, "megatron")
    assert "--cut-at" not in str(e.value.hint)  # one stack alone would leave the other inside E or L


def test_a_parameter_every_layer_reads_goes_with_every_part() -> None:
    """DeBERTa's ``encoder.rel_embeddings.weight`` is read by each layer's attention, its own
    module never called: the unit lists alone left it out of every part ([Note: parameters
    held outside the units])."""
    from autopipe import trace
    from autopipe.profile.estimate import estimate
    from autopipe.spec import example_target
    from tests.zoo import deberta

    spec = deberta()
    profile = estimate(trace(spec.model, spec.example_inputs), spec.example_inputs, progress=False,
                       loss_fn=spec.loss_fn, target=example_target(spec))
    plan = plan_profile(profile, num_stages=2, microbatches=4, granularity="layer", time_limit=30)
    holder = "deberta.encoder.rel_embeddings"
    assert plan.options["granularity"]["holders"] == [[holder], [holder]]
    names = canonical(spec.model)
    want = stage_params(plan, profile)
    parts = export_plan(plan, "torchtitan")["parallelism"]["module_fqns_per_model_part"]
    for s, fqns in enumerate(parts):
        assert holder in fqns
        got = {names[n] for n, _ in split_module(spec.model, fqns).named_parameters(remove_duplicate=False)}
        assert got == want[s], f"stage {s}: extra {sorted(got - want[s])[:3]}, missing {sorted(want[s] - got)[:3]}"


class _Enclosing(nn.Module):
    """LayoutLMv3's pattern: a parameter set directly on the module that encloses the layers."""

    def __init__(self) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(8))
        self.embed = nn.Linear(4, 8)
        self.layers = nn.ModuleList(nn.Linear(8, 8) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) + self.cls_token
        for layer in self.layers:
            h = torch.relu(layer(h))
        return h


def _enclosing_plan(model: nn.Module, stages: int, cut_at: str) -> tuple[Plan, Profile]:
    from autopipe import trace
    from autopipe.profile.estimate import estimate

    x = torch.randn(2, 4)
    profile = estimate(trace(model, (x,)), (x,), progress=False)
    return plan_profile(profile, num_stages=stages, microbatches=max(4, stages), cut_at=cut_at,
                        time_limit=30), profile


def test_torchtitan_keeps_a_holder_that_encloses_layers_by_the_modules_inside() -> None:
    """A stage reading a parameter set directly on a module that encloses layers got that
    module as a holder, and torchtitan's part kept it whole: stage 0 of a LayoutLMv3 (and of a
    BLIP-2, whose ``query_tokens`` sit on the model itself) kept every layer, then such plans
    were refused. torchtitan's split keeps what is set on a module on the way to one it lists,
    so part 0, listing ``0.embed`` and layers inside ``0``, keeps ``0.cls_token`` without
    naming ``0``; part 1 keeps a copy it never reads, which a note names ([Note: a holder
    that encloses layers] in autopipe/export/split.py)."""
    model = nn.Sequential(_Enclosing(), nn.Linear(8, 2))
    plan, profile = _enclosing_plan(model, 2, "0.layers.*")
    assert "0" in plan.options["granularity"]["holders"][0]
    data = export_plan(plan, "torchtitan")
    parts = data["parallelism"]["module_fqns_per_model_part"]
    assert "0" not in [m for p in parts for m in p]
    names, want = canonical(model), stage_params(plan, profile)
    for s, fqns in enumerate(parts):
        got = {names[n] for n, _ in split_module(model, fqns).named_parameters(remove_duplicate=False)}
        assert want[s] <= got and got - want[s] <= {"0.cls_token"}, (s, got ^ want[s])
    assert [n for n in data["notes"] if n.startswith("stage 0 reads parameters set directly on 0, which "
                                                     "encloses other stages' layers")]
    assert [n for n in data["notes"] if n.startswith("torchtitan's part 1 keeps 0.cls_token, which only "
                                                     "stage 0 reads")]
    export_plan(plan, "deepspeed")  # its layer list names each stage's own modules
    info = {k: v for k, v in plan.options["granularity"].items() if k != "params"}
    older = dataclasses.replace(plan, options={**plan.options, "granularity": info})
    with pytest.raises(ExportError, match=r"stage 0 holds a parameter set directly on 0, which encloses "
                                          r"modules of stage 1 \(0\.layers\.\d.*does not record") as e:
        export_plan(older, "torchtitan")
    assert "plan it again" in str(e.value.hint)


class _Scaled(nn.Module):
    """A head that reads a parameter set directly on the module that encloses the layers."""

    def __init__(self) -> None:
        super().__init__()
        self.body = _Enclosing()
        self.head = nn.Linear(8, 4096)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x) * self.body.cls_token)


def test_torchtitan_refuses_a_holder_that_no_listed_module_lies_in() -> None:
    """The last stage holds only the head, and reads ``body.cls_token``: its part lists no
    module inside ``body``, so torchtitan's split cannot keep that parameter without the
    layers of the other stages."""
    plan, _ = _enclosing_plan(_Scaled(), 6, "body.layers.*")  # a unit per stage
    assert plan.options["granularity"]["stage_units"][-1] == [5, 6]  # the head alone
    with pytest.raises(ExportError, match=r"stage 5 holds a parameter set directly on body, which encloses "
                                          r"modules of stage 0 .*part 5 lists no module inside it"):
        export_plan(plan, "torchtitan")


@pytest.mark.parametrize("fmt", ["torchtitan", "deepspeed", "megatron"])
def test_tied_parameters_in_several_stages_are_noted(fmt: str) -> None:
    """GPT-2's embedding and head (one tied weight) in the first and the last stage: each
    engine makes a copy per stage and, unless told, trains them apart; the exports said
    nothing ([Note: tied parameters in an export] in autopipe/export/tied.py)."""
    plan, _ = planned("gpt2-2")
    assert plan.options["tied_sync_s"] > 0
    notes = export_plan(plan, fmt)["notes"]
    assert [n for n in notes if "tied parameters in several stages" in n and "train apart" in n]
    untied, _ = planned("llama")
    assert export_plan(untied, fmt)["notes"] == []


def test_megatron_refuses_a_stack_left_inside_e_or_l() -> None:
    """A BART cut between its decoder's layers only (the hint of the two-stack refusal said
    to plan so until 2026-12-07) has its whole encoder in unit 0: Megatron-LM would read
    the layout ``E|ttL`` with E as the embedding alone. The plan records the stack it does
    not cut (``uncut``); Megatron is refused, torchtitan's lists hold it."""
    import transformers as hf

    import autopipe
    from autopipe.partition.planner import plan_profile
    from autopipe.profile import estimate
    from tests import zoo

    cfg = hf.BartConfig(vocab_size=zoo.VOCAB, d_model=32, encoder_layers=2, decoder_layers=2,
                        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                        decoder_ffn_dim=64, max_position_embeddings=64, dropout=0.0,
                        attention_dropout=0.0, activation_dropout=0.0, use_cache=False)
    spec = zoo._reversal(zoo._seeded(lambda: zoo._Seq2Seq(hf.BartForConditionalGeneration(cfg))), "bart")
    graph = autopipe.trace(spec.model, spec.example_inputs, spec.example_kwargs)
    profile = estimate(graph, spec.example_inputs, spec.example_kwargs, device_spec="h100")
    both = plan_profile(profile, num_stages=2, microbatches=4, granularity="layer")
    with pytest.raises(ExportError, match="2 module lists") as e:
        export_plan(both, "megatron")
    assert "--cut-at" not in str(e.value.hint)
    decoder = next(x for x in both.options["granularity"]["lists"] if "decoder" in x)
    plan = plan_profile(profile, num_stages=2, microbatches=4, cut_at=f"{decoder}.*")
    info = plan.options["granularity"]
    encoder = decoder.replace("decoder", "encoder")
    assert info["lists"] == [decoder] and info["uncut"] == [[encoder, 2]]
    with pytest.raises(ExportError, match=f"{encoder} \\(2 blocks\\) runs before or after them"):
        export_plan(plan, "megatron")
    parts = export_plan(plan, "torchtitan")["parallelism"]["module_fqns_per_model_part"]
    assert any(m == encoder or m.startswith(encoder + ".") or encoder.startswith(m + ".")
               for m in parts[0])  # the first part holds the encoder
    assert both.options["granularity"]["uncut"] == []


def _without_uncut(plan: Plan) -> Plan:
    info = {k: v for k, v in plan.options["granularity"].items() if k != "uncut"}
    return dataclasses.replace(plan, options={**plan.options, "granularity": info})


def test_megatron_refuses_a_plan_that_does_not_record_its_uncut_stacks() -> None:
    """[Note: a layer record without uncut]: a plan from before ``uncut`` was recorded passed
    Megatron's E/L check whatever stack its E or L held; it is refused, naming a stack where its
    units' module paths show one, else saying to plan again. The other formats still export it."""
    old = _without_uncut(planned("gpt2-2")[0])
    with pytest.raises(ExportError, match="does not record which stacks") as e:
        export_plan(old, "megatron")
    assert "plan it again" in str(e.value.hint)
    export_plan(old, "torchtitan")
    assert export_plan(planned("gpt2-2")[0], "megatron")["layers_per_stage"]
    units = old.options["granularity"]["units"]
    blocks = ["enc.block.0", "enc.block.1"]  # as a BART cut at its decoder shows its encoder
    first = dataclasses.replace(old.stages[0], modules=(*old.stages[0].modules, *blocks))
    shown = dataclasses.replace(old, stages=(first, *old.stages[1:]), options={**old.options, "granularity": {
        **old.options["granularity"], "units": [[*units[0], *blocks], *units[1:]]}})
    with pytest.raises(ExportError, match=r"enc\.block \(2 blocks\) runs before or after them"):
        export_plan(shown, "megatron")


def test_a_parameter_of_the_model_itself_is_noted() -> None:
    """CLIP's ``logit_scale`` lies on the model itself: torchtitan keeps it in every part, DeepSpeed
    in none, and the exports said nothing ([Note: the model's own parameters in an export])."""
    from autopipe import trace
    from autopipe.profile.estimate import estimate
    from autopipe.spec import example_target
    from tests.zoo import clip

    spec = clip()
    profile = estimate(trace(spec.model, spec.example_inputs), spec.example_inputs, progress=False,
                       loss_fn=spec.loss_fn, target=example_target(spec))
    plan = plan_profile(profile, num_stages=2, microbatches=4, granularity="layer", time_limit=30)
    readers = [s for s, names in enumerate(plan.options["granularity"]["root_params"]) if "logit_scale" in names]
    assert readers == [1]
    titan = [n for n in export_plan(plan, "torchtitan")["notes"] if n.startswith("logit_scale")]
    assert len(titan) == 1 and "stage 1 reads it" in titan[0] and "copy in stage 0 never trains" in titan[0]
    ds = [n for n in export_plan(plan, "deepspeed")["notes"] if n.startswith("logit_scale")]
    assert len(ds) == 1 and "in none of DeepSpeed's layers" in ds[0]
    assert "root_params" not in planned("llama")[0].options["granularity"]  # none: no note


def test_a_hint_to_another_format_says_whether_it_takes_the_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    """[Note: a hint to another format]: a Wav2Vec2 plan Megatron-LM refused was sent to
    torchtitan, which refused it too."""
    import autopipe.export as export

    plan, _ = planned("gpt2")

    def refuse(why: str, hint: str | None = None):  # type: ignore[no-untyped-def]
        def exporter(*_: object) -> dict[str, object]:
            raise ExportError(why, hint=hint)
        return exporter

    formats = dict(FORMATS)
    monkeypatch.setitem(export.FORMATS, "megatron", refuse("E holds a stack", "export it --format torchtitan or deepspeed"))
    monkeypatch.setitem(export.FORMATS, "torchtitan", refuse("a parameter on the root"))
    with pytest.raises(ExportError, match="E holds a stack") as e:
        export_plan(plan, "megatron")
    assert e.value.hint == ("export it --format torchtitan or deepspeed (only deepspeed takes this "
                            "plan; torchtitan: a parameter on the root)")
    monkeypatch.setitem(export.FORMATS, "deepspeed", refuse("no 1f1b"))
    with pytest.raises(ExportError) as e:
        export_plan(plan, "megatron")
    assert str(e.value.hint).endswith("(but torchtitan and deepspeed refuse this plan too: "
                                      "torchtitan: a parameter on the root; deepspeed: no 1f1b)")
    monkeypatch.setitem(export.FORMATS, "torchtitan", formats["torchtitan"])
    monkeypatch.setitem(export.FORMATS, "deepspeed", formats["deepspeed"])
    with pytest.raises(ExportError) as e:
        export_plan(plan, "megatron")
    assert e.value.hint == "export it --format torchtitan or deepspeed"  # both take it: unchanged
