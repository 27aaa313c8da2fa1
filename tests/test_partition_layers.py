"""Tests for autopipe/partition/layers.py: cuts only between whole layers, checked by brute force."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable

import pytest
import torch

from autopipe.errors import PlanError
from autopipe.partition import brute
from autopipe.partition.coarsen import merge_forced
from autopipe.partition.costs import evaluate, violations
from autopipe.partition.planner import plan_profile
from autopipe.partition.problem import Config, Problem, from_profile
from autopipe.partition.synthetic import synthetic_profile
from autopipe.plan_format import Device, Plan
from autopipe.profile.profile import Profile
from tests.conftest import ROOT


def layered_profile(seed: int, layers: int = 4, per_layer: int = 2, skip_prob: float = 0.3,
                    nontensor: float = 0.0) -> Profile:
    """A synthetic chain with skips whose first node is an embedding, last a head, and the
    others ``layers`` modules ``h.<i>`` of ``per_layer`` nodes; odd seeds put glue ``h``
    between layers; ``nontensor``: the chance of an output that cannot be sent (forced merges)."""
    blocks = 2 + layers * per_layer
    prof = synthetic_profile(blocks, seed=seed, skip_prob=skip_prob, max_skip=4, layer_size=per_layer,
                             nontensor_prob=nontensor)
    nodes = []
    for n in prof.nodes:
        if n.op != "call_function":
            nodes.append(n)
            continue
        i = int(n.name[1:])
        module = "emb" if i == 0 else "head" if i == blocks - 1 else f"h.{(i - 1) // per_layer}.op"
        if 0 < i < blocks - 1 and (i - 1) % per_layer == 0 and i > 1 and seed % 2:
            module = "h"  # glue between layers, at the list's own level
        nodes.append(dataclasses.replace(n, module=module))
    return dataclasses.replace(prof, nodes=tuple(nodes))


def config(p: int, m: int = 4) -> Config:
    return Config(num_stages=p, microbatches=m, schedule="1f1b",
                  devices=tuple(Device(name=f"d{i}", memory=0) for i in range(p)), link_bandwidth=1e9)


def unit_of(module: str) -> str:
    """The unit a node belongs to, by its module alone (independent of layers.py)."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "h" and len(parts) > 1 else module


def layer_boundary_best(problem: Problem, profile: Profile) -> float:
    """Brute force over the layer boundaries: every way to give each stage consecutive whole
    units (nodes before the first layer in stage 0, after the last in the last stage)."""
    names = [n.name for n in profile.nodes]
    first = next(i for i, n in enumerate(profile.nodes) if n.module.startswith("h."))
    last = max(i for i, n in enumerate(profile.nodes) if n.module.startswith("h."))
    unit: list[int] = []
    seen: list[str] = []
    for i, n in enumerate(profile.nodes):
        if i < first:
            unit.append(0)
        elif i > last:
            unit.append(10_000)
        elif n.module.startswith("h."):
            key = unit_of(n.module)
            if key not in seen:
                seen.append(key)
            unit.append(seen.index(key) + 1)
        else:
            unit.append(unit[-1])
    count = len(seen) + 2
    unit = [min(u, count - 1) for u in unit]
    index = {n: i for i, n in enumerate(names)}
    p = problem.config.num_stages
    best = math.inf
    for cuts in itertools.combinations(range(1, count), p - 1):
        bounds = [0, *cuts, count]
        stage_of_unit = [s for s in range(p) for _ in range(bounds[s], bounds[s + 1])]
        stage_of = [stage_of_unit[unit[index[b.nodes[0]]]] for b in problem.blocks]
        if any(stage_of_unit[unit[index[n]]] != stage_of[i]
               for i, b in enumerate(problem.blocks) for n in b.nodes):
            continue  # a forced block straddles this boundary
        if not violations(problem, stage_of):
            best = min(best, evaluate(problem, stage_of).objective_s)
    return best


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("p", [2, 3])
def test_restricted_plan_is_the_best_layer_split_and_never_beats_cutting_anywhere(seed: int, p: int) -> None:
    profile = layered_profile(seed, layers=3 if p == 3 else 4, nontensor=0.25 if seed >= 3 and p == 2 else 0.0)
    problem = merge_forced(from_profile(profile, config(p)))
    plan = plan_profile(profile, num_stages=p, microbatches=4, link_bandwidth=1e9,
                        granularity="layer", mip_gap=1e-6)
    info = plan.options["granularity"]
    assert info["pattern"] == "h.*" and info["auto"]
    # every stage holds whole units: each layer's nodes in one stage
    where: dict[str, set[int]] = {}
    for s in plan.stages:
        for n in s.nodes:
            where.setdefault(unit_of(profile.by_name[n].module), set()).add(s.index)
    assert all(len(v) == 1 for k, v in where.items() if k.startswith("h.")), where
    # the restricted optimum equals brute force over the layer boundaries
    expected = layer_boundary_best(problem, profile)
    assert plan.solver.objective_s == pytest.approx(expected, rel=1e-6)
    # and is never faster than the unrestricted optimum (brute force over every partition)
    free = brute.best(problem)
    assert free is not None
    assert free[0] <= plan.solver.objective_s * (1 + 1e-9)
    assert info["unrestricted_s"] <= plan.predicted.iteration_s
    assert info["cost"] == pytest.approx(plan.predicted.iteration_s / info["unrestricted_s"])
    assert info["cost"] >= 1.0
    assert plan.baselines["unrestricted"].iteration_s == info["unrestricted_s"]
    # the record: units in order, per stage a consecutive range of them
    assert info["units"][0] == ["emb"] and info["units"][-1] == ["head"]
    assert [u for u in info["units"][1:-1]] == [[f"h.{i}"] for i in range(info["layers"])]
    bounds = [a for a, _ in info["stage_units"]] + [info["stage_units"][-1][1]]
    assert bounds[0] == 0 and bounds[-1] == len(info["units"]) and bounds == sorted(bounds)


def test_cut_at_regex_and_glob_agree() -> None:
    profile = layered_profile(1)
    glob = plan_profile(profile, num_stages=3, microbatches=4, cut_at="h.*")
    regex = plan_profile(profile, num_stages=3, microbatches=4, cut_at=r"h\.\d+")
    assert [s.nodes for s in glob.stages] == [s.nodes for s in regex.stages]
    assert regex.options["granularity"]["pattern"] == r"h\.\d+"
    assert not regex.options["granularity"]["auto"]


def test_node_plans_are_unchanged() -> None:
    """Plans that cut anywhere record nothing new (golden files stay byte-identical)."""
    plan = plan_profile(layered_profile(0), num_stages=2, microbatches=4)
    assert "granularity" not in plan.options and "unrestricted" not in plan.baselines


def test_layer_plan_round_trips(tmp_path: object) -> None:
    from pathlib import Path

    plan = plan_profile(layered_profile(2), num_stages=3, microbatches=4, granularity="layer")
    path = Path(str(tmp_path)) / "plan.json"
    plan.save(path)
    assert Plan.load(path) == plan


@pytest.mark.parametrize("name,layers", [("gpt2", "transformer.h"), ("llama", "model.layers"),
                                         ("bert", "bert.encoder.layer"), ("mlp", "blocks")])
def test_finds_each_examples_layers(name: str, layers: str) -> None:
    profile = Profile.load(ROOT / "profiles" / "cpu" / f"{name}.json")
    plan = plan_profile(profile, num_stages=2, microbatches=4, granularity="layer", time_limit=20)
    info = plan.options["granularity"]
    assert info["pattern"] == f"{layers}.*"
    assert [u for u in info["units"][1:-1]] == [[f"{layers}.{i}"] for i in range(info["layers"])]


@pytest.mark.parametrize("kwargs,match", [
    ({"cut_at": "nosuch.*"}, r"--cut-at 'nosuch.\*' matches no module.*h\.\* \(4\)"),
    ({"cut_at": "h.(("}, "not a valid regular expression"),
    ({"granularity": "block"}, "unknown granularity 'block'"),
    ({"granularity": "node", "cut_at": "h.*"}, r"granularity='node' cuts anywhere, but cut_at='h\.\*'"),
    ({"granularity": "layer", "num_stages": 7}, "cannot cut the model into 7 stages at layer boundaries"),
])
def test_bad_options(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"num_stages": 2, "microbatches": 8, **kwargs}
    with pytest.raises(PlanError, match=match):
        plan_profile(layered_profile(0), **args)  # type: ignore[arg-type]


def test_too_many_stages_for_the_layers_says_what_export_takes() -> None:
    """The hint for more stages than the layers allow names finer layers first and says that
    a plan cut anywhere is refused by export (it said "plan without --granularity layer",
    whose plan the export sends back to --granularity layer, until 2026-12-07)."""
    with pytest.raises(PlanError, match="at layer boundaries: the 4 layers found") as e:
        plan_profile(layered_profile(0), num_stages=7, microbatches=8, granularity="layer")
    assert "--cut-at" in str(e.value.hint) and "autopipe export refuses" in str(e.value.hint)


def test_no_repeated_layers() -> None:
    profile = layered_profile(0)
    flat = dataclasses.replace(profile, nodes=tuple(
        dataclasses.replace(n, module=n.module.replace(".", "_")) for n in profile.nodes))
    with pytest.raises(PlanError, match="found no repeated layers") as e:
        plan_profile(flat, num_stages=2, microbatches=4, granularity="layer")
    assert "--cut-at" in str(e.value.hint) and "h_0_op" in str(e.value.hint)
    # it said "or plan without --granularity layer", whose plan the export refuses with a hint
    # back to --granularity layer (a loop, until 2026-12-07)
    assert "autopipe export refuses" in str(e.value.hint)
    # inside a wrapper of one child (a Hugging Face model's `model`), the hint names the
    # modules where they part: it named only `model` until 2026-12-07
    wrapped = dataclasses.replace(flat, nodes=tuple(
        dataclasses.replace(n, module=f"model.inner.{n.module}" if n.module else "") for n in flat.nodes))
    with pytest.raises(PlanError, match="found no repeated layers") as e:
        plan_profile(wrapped, num_stages=2, microbatches=4, granularity="layer")
    assert "(modules here: model.inner.emb, model.inner.h_0_op" in str(e.value.hint)


def _stacks(profile: Profile, module: Callable[[int], str], target: Callable[[int], str] = lambda i: "op") -> Profile:
    """``profile`` (``layered_profile``, no glue) with layer ``i``'s nodes in ``module(i)``
    calling ``target(i)``, and no parameters (each layer then runs the same calls)."""
    nodes = []
    for n in profile.nodes:
        if n.module.startswith("h."):
            i = int(n.module.split(".")[1])
            n = dataclasses.replace(n, module=f"{module(i)}.op", target=target(i))
        nodes.append(dataclasses.replace(n, params=(), shared_params=(), param_bytes=0))
    return dataclasses.replace(profile, nodes=tuple(nodes), params={}, tied=())


def test_finds_the_layers_of_every_stack() -> None:
    """An encoder-decoder's two stacks are both cut between ([Note: every stack of an
    encoder-decoder]): the same units, the same cuts, as one list of four layers."""
    base = _stacks(layered_profile(0), lambda i: f"h.{i}")
    two = _stacks(layered_profile(0), lambda i: f"enc.{i}" if i < 2 else f"dec.{i - 2}")
    one = plan_profile(base, num_stages=3, microbatches=4, granularity="layer")
    plan = plan_profile(two, num_stages=3, microbatches=4, granularity="layer")
    info = plan.options["granularity"]
    assert info["pattern"] == r"(?:enc|dec)\.\d+" and info["lists"] == ["enc", "dec"]
    assert info["layers"] == 4 and info["stage_units"] == one.options["granularity"]["stage_units"]
    assert [s.nodes for s in plan.stages] == [s.nodes for s in one.stages]
    assert one.options["granularity"]["lists"] == ["h"]


def test_records_whether_the_layers_are_one_stack_built_alike() -> None:
    """``alike`` (for the exports that count transformer layers): numbered children of their
    list, all of them, built alike; not a list of blocks that run different calls, nor a
    ``--cut-at`` over unlike modules (``*``: ``emb``, ``h``, ``head``) or over some of a
    list's blocks."""
    base = layered_profile(0, layers=5)
    same, other = _stacks(base, lambda i: f"h.{i}"), _stacks(base, lambda i: f"h.{i}", lambda i: f"op{i}")

    def alike(profile: Profile, **kw: object) -> bool:
        plan = plan_profile(profile, num_stages=2, microbatches=4, **kw)  # type: ignore[arg-type]
        return bool(plan.options["granularity"]["alike"])

    assert alike(same, granularity="layer") and alike(same, cut_at=r"h\.\d+")
    assert not alike(other, granularity="layer")
    assert not alike(same, cut_at="*")
    assert not alike(same, cut_at="h.[1-3]")  # h.0 and h.4 lie in the units around them


@pytest.mark.parametrize("module,target,lists", [
    # the second list's children call different things: a Sequential stem, not a stack
    (lambda i: f"stem.{i}" if i < 2 else f"h.{i}", lambda i: f"op{i}" if i < 2 else "op", ["h"]),
    # a list inside a layer (an MoE layer's experts) is part of that layer's unit
    (lambda i: f"h.0.experts.{i}" if i < 2 else f"h.{i - 1}", lambda i: "op", ["h"]),
    # two alike children (or all but the first alike) make a stack
    (lambda i: f"stem.{i}" if i < 2 else f"h.{i}", lambda i: "op", ["stem", "h"]),
    # stacks of one layer whose parts are numbered (T5's block.0.layer.0-2): the stacks are
    # the lists, not the parts ([Note: the parts of a lone layer])
    (lambda i: f"enc.0.layer.{i}" if i < 2 else f"dec.0.layer.{i - 2}", lambda i: f"op{i % 3}",
     ["enc", "dec"]),
    # a lone layer's parts built alike (one Swin stage's blocks) are the layers
    (lambda i: f"stages.0.blocks.{i}", lambda i: "op", ["stages.0.blocks"]),
])
def test_counts_a_second_list_only_where_it_is_a_stack(module: Callable[[int], str],
                                                        target: Callable[[int], str],
                                                        lists: list[str]) -> None:
    profile = _stacks(layered_profile(0, layers=5), module, target)
    plan = plan_profile(profile, num_stages=2, microbatches=4, granularity="layer")
    assert plan.options["granularity"]["lists"] == lists


class _SideBySide(torch.nn.Module):
    """Two layers in a row, then four side by side on the same features (a pyramid pooling
    module's branches), summed, then a head; the branches' costs differ."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(64, 64) for _ in range(2))
        self.branches = torch.nn.ModuleList(torch.nn.Sequential(
            *(torch.nn.Linear(64, 64) for _ in range(1 + 3 * (i % 2)))) for i in range(4))
        self.head = torch.nn.Linear(64, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.relu(layer(x))
        return self.head(sum(b(x) for b in self.branches))


@pytest.mark.parametrize("p", [2, 3, 4])
def test_layers_side_by_side_stay_in_order(p: int) -> None:
    """[Note: layers side by side]: each block of the restricted problem reads the one
    before it, so the partitioners cannot put a later unit in an earlier stage; every
    stage's units are a run. Until 2026-12-07 branches that do not read each other were
    blocks of their own, and UperNet's plan of 3 stages failed an assertion
    (``stage holds units [2, 4], outside [2, 3)``)."""
    import autopipe
    from autopipe.partition.layers import restrict
    from autopipe.profile import estimate

    model, x = _SideBySide(), torch.randn(16, 64)
    profile = estimate(autopipe.trace(model, (x,)), (x,), device_spec="h100")
    problem, layers = restrict(merge_forced(from_profile(profile, config(p))), r"(layers|branches)\.\d+")
    reads = {d: {v.src for v in problem.values if d in v.dsts} for d in range(problem.size)}
    behind: list[set[int]] = []
    for k in range(problem.size):
        behind.append(reads[k].union(*(behind[j] for j in reads[k])))
        assert k == 0 or k - 1 in behind[k], f"block {k} does not read block {k - 1}"
    plan = plan_profile(profile, num_stages=p, microbatches=4, granularity="layer",
                        cut_at=r"(layers|branches)\.\d+")
    held = [{layers.node_unit[n] for n in s.nodes} for s in plan.stages]
    assert all(max(a) <= min(b) for a, b in itertools.pairwise(held))


def test_upernet_plans_three_stages_at_layer_boundaries() -> None:
    """The model the assertion was found on (zoo sweep of 2026-12-07)."""
    import autopipe
    from autopipe.profile import estimate
    from tests import zoo

    spec = zoo.upernet()
    graph = autopipe.trace(spec.model, spec.example_inputs, spec.example_kwargs)
    profile = estimate(graph, spec.example_inputs, spec.example_kwargs, device_spec="h100")
    plan = plan_profile(profile, num_stages=3, microbatches=4, granularity="layer")
    starts = [a for a, _ in plan.options["granularity"]["stage_units"]]
    assert starts == sorted(starts) and len(plan.stages) == 3


def test_a_parameter_no_node_reads_needs_no_holder() -> None:
    """DINOv2's ``embeddings.mask_token`` is read only with a mask: the output node owns it
    (``autopipe.trace``), and until 2026-12-07 that made ``dinov2.embeddings`` a holder of
    the last stage, whose torchtitan part then kept the whole embeddings module."""
    import autopipe
    from autopipe.profile import estimate
    from tests import zoo

    spec = zoo.dinov2()
    graph = autopipe.trace(spec.model, spec.example_inputs, spec.example_kwargs)
    profile = estimate(graph, spec.example_inputs, spec.example_kwargs, device_spec="h100")
    assert "dinov2.embeddings.mask_token" in profile.by_name["output"].params
    plan = plan_profile(profile, num_stages=2, microbatches=4, granularity="layer")
    info = plan.options["granularity"]
    assert info["holders"] == [[], []]
    assert "dinov2.embeddings" in info["units"][0]  # the module stays with the first stage's unit


@pytest.mark.parametrize("blocks,module,lists,layers", [
    # an encoder and a decoder of one layer each (Whisper, BART from tiny configs): it
    # found no repeated layers until 2026-12-07
    (2, lambda i: f"enc.layers.{i}" if i < 1 else f"dec.layers.{i - 1}", ["enc.layers", "dec.layers"], 2),
    # a stack of one layer beside a stack of two, named alike: both are cut between
    (3, lambda i: f"enc.layers.{i}" if i < 2 else f"dec.layers.{i - 2}", ["enc.layers", "dec.layers"], 3),
    # a list of one block named like no stack (a head) stays inside the units around them
    (3, lambda i: f"h.{i}" if i < 2 else f"proj.{i - 2}", ["h"], 2),
    # a model of one layer
    (1, lambda i: f"h.{i}", ["h"], 1),
])
def test_stacks_of_one_layer(blocks: int, module: Callable[[int], str], lists: list[str],
                             layers: int) -> None:
    """[Note: stacks of one layer]."""
    profile = _stacks(layered_profile(0, layers=blocks), module)
    plan = plan_profile(profile, num_stages=2, microbatches=4, granularity="layer")
    info = plan.options["granularity"]
    assert info["lists"] == lists and info["layers"] == layers and info["alike"]


def test_a_one_module_list_is_no_stack() -> None:
    """A ``Sequential`` of one module (``h.0`` runs nodes of its own, holds no module that
    runs any) is no stack of one layer: the model still has no layers."""
    profile = layered_profile(0, layers=1)
    flat = dataclasses.replace(profile, nodes=tuple(
        dataclasses.replace(n, module=n.module.removesuffix(".op")) for n in profile.nodes))
    with pytest.raises(PlanError, match="found no repeated layers"):
        plan_profile(flat, num_stages=2, microbatches=4, granularity="layer")


def test_whisper_of_one_layer_per_stack_plans_and_exports() -> None:
    """The model the defect was found on: a Whisper of one encoder and one decoder layer
    found no repeated layers, and its node-granular plan could not be exported."""
    import autopipe
    from autopipe.export import export_plan
    from autopipe.profile import estimate
    from tests import zoo

    spec = zoo.whisper()
    graph = autopipe.trace(spec.model, spec.example_inputs, spec.example_kwargs)
    profile = estimate(graph, spec.example_inputs, spec.example_kwargs, device_spec="h100")
    plan = plan_profile(profile, num_stages=2, microbatches=4, granularity="layer")
    info = plan.options["granularity"]
    assert info["lists"] == ["model.model.encoder.layers", "model.model.decoder.layers"]
    assert info["layers"] == 2 and info["alike"]
    for fmt in ("torchtitan", "deepspeed"):
        assert export_plan(plan, fmt)


def test_t5_of_two_layers_per_stack_cuts_both_stacks() -> None:
    """A Hugging Face T5 of two blocks a stack: the encoder's first block runs the relative
    position bias's embedding, which its second is given, so the encoder was no stack of
    layers built alike and ``--granularity layer`` kept it whole on the first stage."""
    import transformers

    import autopipe
    from autopipe.profile import estimate
    from tests import zoo

    cfg = transformers.T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=2,
                                num_decoder_layers=2, num_heads=2, use_cache=False,
                                decoder_start_token_id=0, pad_token_id=0)
    torch.manual_seed(0)
    model = zoo._Seq2Seq(transformers.T5ForConditionalGeneration(cfg))
    inputs = (torch.randint(0, 64, (2, 8)), torch.randint(0, 64, (2, 8)))
    graph = autopipe.trace(model, inputs)
    profile = estimate(graph, inputs, None, device_spec="h100")
    plan = plan_profile(profile, num_stages=4, microbatches=4, granularity="layer", method="dp")
    info = plan.options["granularity"]
    assert info["lists"] == ["model.encoder.block", "model.decoder.block"]
    assert info["layers"] == 4 and info["alike"] and not info["uncut"]
