"""Tests for autopipe/api.py: ``autopipe.plan()`` on the example models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import autopipe
from autopipe import ModelSpec
from autopipe.errors import InfeasiblePlanError, PlanError, PlanMismatchError
from autopipe.profile import Profile, measure
from autopipe.runtime.split import split_graph
from tests.conftest import calibrated_once, example_spec


@pytest.fixture(scope="module")
def profiled(traced: dict[str, tuple[ModelSpec, autopipe.Graph]]) -> dict[str, Profile]:
    """A quick CPU measurement of every example (one repeat: the planner only needs numbers)."""
    return {name: measure(g, spec.example_inputs, spec.example_kwargs, warmup=0, repeats=1,
                          progress=False)
            for name, (spec, g) in traced.items()}


def _check(graph: autopipe.Graph, plan: autopipe.Plan) -> None:
    assert plan.graph_fingerprint == graph.fingerprint
    names = [n for s in plan.stages for n in s.nodes]
    assert sorted(names) == sorted(n.name for n in graph.nodes)
    split_graph(graph, plan)  # the runtime accepts the plan: convex, tensors only, output last


@pytest.mark.parametrize("name", ["mlp", "gpt2", "llama", "resnet", "unet", "bert"])
def test_examples_plan_and_split(name: str, traced: dict[str, tuple[ModelSpec, autopipe.Graph]],
                                 profiled: dict[str, Profile]) -> None:
    spec, graph = traced[name]
    plan = autopipe.plan(spec.model, spec.example_inputs, example_kwargs=spec.example_kwargs,
                         num_stages=4, profile=profiled[name])
    _check(graph, plan)
    assert plan.solver.status == "optimal" and plan.solver.gap <= 0.01
    for b in ("uniform", "params"):
        base = plan.baselines[b].iteration_s
        assert base is None or plan.predicted.iteration_s <= base * (1 + 1e-9)


def test_tied_weights_are_held_by_both_ends(traced: dict[str, tuple[ModelSpec, autopipe.Graph]],
                                            profiled: dict[str, Profile]) -> None:
    spec, graph = traced["gpt2"]
    plan = autopipe.plan(spec.model, spec.example_inputs, num_stages=2, profile=profiled["gpt2"])
    wte = graph.param_bytes["transformer.wte.weight"]
    # the embedding reads it in stage 0, the tied head in stage 1: both hold a full copy
    assert all(s.memory.params >= wte for s in plan.stages)


def test_measure_path_and_saved_profile(tmp_path: Path) -> None:
    spec = example_spec("mlp", layers=4)
    plan = autopipe.plan(spec.model, spec.example_inputs, num_stages=2)
    assert plan.options["profile_method"] == "measure"
    graph = autopipe.trace(spec.model, spec.example_inputs)
    prof = measure(graph, spec.example_inputs, warmup=0, repeats=1, progress=False)
    path = tmp_path / "p.json"
    prof.save(path)
    again = autopipe.plan(spec.model, spec.example_inputs, num_stages=2, profile=str(path))
    _check(graph, again)
    assert again == autopipe.plan(spec.model, spec.example_inputs, num_stages=2, profile=path)


def test_estimate_on_meta() -> None:
    spec = example_spec("llama", device="meta")
    plan = autopipe.plan(spec.model, spec.example_inputs, num_stages=2, profile="estimate",
                         device_spec="a100")
    assert plan.options["profile_device"] == "estimate:a100"
    assert plan.options["link_bandwidth"] > 0


def test_profile_of_another_model(profiled: dict[str, Profile]) -> None:
    spec = example_spec("mlp", layers=3)
    with pytest.raises(PlanMismatchError, match="another model"):
        autopipe.plan(spec.model, spec.example_inputs, num_stages=2, profile=profiled["mlp"])


def test_bad_arguments(profiled: dict[str, Profile]) -> None:
    spec = example_spec("mlp")
    with pytest.raises(PlanError, match="neither a mode nor a file"):
        autopipe.plan(spec.model, spec.example_inputs, num_stages=2, profile="guess")
    with pytest.raises(PlanError, match="unknown schedule") as info:
        autopipe.plan(spec.model, spec.example_inputs, num_stages=2, schedule="zb-v")
    assert "1f1b" in (info.value.hint or "")
    with pytest.raises(InfeasiblePlanError, match="stage"):
        autopipe.plan(spec.model, spec.example_inputs, num_stages=2, memory_limit="64KiB",
                      profile=profiled["mlp"])


def test_batch_size_profiles_each_micro_batch_size() -> None:
    spec = example_spec("mlp", batch_size=8)
    plan = autopipe.plan(spec.model, spec.example_inputs, num_stages=2, batch_size=16,
                         profile="estimate", schedule="auto", method="dp")
    size = plan.options["microbatch_size"]
    assert plan.microbatches * size == 16
    assert [t["microbatches"] for t in plan.options["search"] if t["schedule"] == "1f1b"] == [
        1, 2, 4, 8, 16]
    # the plan is for the spec built at that micro-batch size: the runtime will accept it
    at = example_spec("mlp", batch_size=size)
    assert plan.graph_fingerprint == autopipe.trace(at.model, at.example_inputs).fingerprint


def test_batch_size_measured_with_its_loss_is_refined(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch-size search on measured profiles: each size's loss reads its own target (the
    example's, cut or tiled as the inputs are: a crash until 2026-12-06), the runtime's
    costs are measured once for every size, and the chosen candidate is re-timed as whole
    stages (as a plan of one size is), its search rows kept."""
    from autopipe.spec import example_target

    asked = calibrated_once(monkeypatch)
    spec = example_spec("mlp", batch_size=4)
    target = example_target(spec)
    plan = autopipe.plan(spec.model, spec.example_inputs, num_stages=2, batch_size=8, microbatches="auto",
                         loss_fn=spec.loss_fn, target=target, time_limit=10)
    assert asked == ["adam"]  # one calibration for the four sizes
    assert [t["microbatches"] for t in plan.options["search"]] == [1, 2, 4, 8]
    assert plan.options["runtime"]["forward_overhead_s"] == 1e-4 and "loss" in plan.options
    assert plan.options["refine"]["rounds"] and plan.options["microbatch_size"] * plan.microbatches == 8
    assert plan.options["batch_size"] == 8 and "search_lower_bound_s" not in plan.options
    at = example_spec("mlp", batch_size=plan.options["microbatch_size"])
    assert plan.graph_fingerprint == autopipe.trace(at.model, at.example_inputs).fingerprint


def test_node_granularity_with_cut_at_is_refused() -> None:
    """``granularity="node"`` with ``cut_at`` planned layer-granular, silently (until
    2026-12-07); it is refused before anything is traced, on both paths. ``cut_at`` alone
    still implies ``layer``."""
    spec = example_spec("mlp")
    for given in ({"num_stages": 2}, {"gpus": 2, "batch_size": 8}):
        with pytest.raises(PlanError, match=r"granularity='node' cuts anywhere, but "
                                            r"cut_at='blocks\.\*'") as info:
            autopipe.plan(spec.model, spec.example_inputs, granularity="node", cut_at="blocks.*",
                          profile="estimate", **given)  # type: ignore[arg-type]
        assert "drop one" in (info.value.hint or "")


def test_a_loss_needs_its_target() -> None:
    """loss_fn without target was planned without the loss, silently (until 2026-12-06)."""
    spec = example_spec("mlp")
    for given in ({"loss_fn": spec.loss_fn}, {"target": spec.batch(1)[1]}):
        with pytest.raises(PlanError, match="without") as info:
            autopipe.plan(spec.model, spec.example_inputs, num_stages=2, profile="estimate", **given)
        assert info.value.hint is not None and "spec.batch(1)[1]" in info.value.hint


def test_batch_size_with_a_saved_profile(profiled: dict[str, Profile]) -> None:
    spec = example_spec("mlp")
    plan = autopipe.plan(spec.model, spec.example_inputs, num_stages=2, profile=profiled["mlp"],
                         batch_size=32, microbatches=4)
    assert plan.options["microbatch_size"] == 8
    # a plan records the size B / m, and train builds the model at it: the profile must be of it
    with pytest.raises(PlanError, match="micro-batches hold 8 samples, but a batch of 32 in 2") as info:
        autopipe.plan(spec.model, spec.example_inputs, num_stages=2, profile=profiled["mlp"],
                      batch_size=32, microbatches=2)
    assert "--microbatches 4" in str(info.value.hint)
    with pytest.raises(PlanError, match="only one profile was given"):
        autopipe.plan(spec.model, spec.example_inputs, num_stages=2, profile=profiled["mlp"],
                      batch_size=32, microbatches="auto")
    # a count that does not divide the batch: the hint offers no auto, which one profile refuses
    # (it did until 2026-12-07)
    with pytest.raises(PlanError, match="3 micro-batches do not divide the batch of 32") as info:
        autopipe.plan(spec.model, spec.example_inputs, num_stages=2, profile=profiled["mlp"],
                      batch_size=32, microbatches=3)
    assert "auto" not in str(info.value.hint) and "profile's size" in str(info.value.hint)
    with pytest.raises(PlanError, match="3 micro-batches do not divide") as info:
        autopipe.plan(spec.model, spec.example_inputs, num_stages=2, batch_size=32, microbatches=3)
    assert "or auto" in str(info.value.hint)


def test_planning_leaves_the_model_and_the_random_state_as_they_were() -> None:
    """Profiling runs the model: until 2026-12-07 ``autopipe.plan`` moved the random stream
    that a seeded training goes on with."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                                torch.nn.Linear(16, 4))
    x = torch.randn(8, 16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(3)
    autopipe.plan(model, (x,), num_stages=2, runtime_costs=False, refine=False, time_limit=10)
    drawn = torch.rand(4)
    torch.manual_seed(3)
    assert torch.equal(drawn, torch.rand(4))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


class _DictIn(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(16, 16), torch.nn.Linear(16, 4)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.b(torch.relu(self.a(inputs["x"] + inputs["y"])))


@pytest.mark.parametrize("how", [{"profile": "estimate"}, {"dtype": "bf16", "refine": False, "runtime_costs": False}])
def test_tensors_inside_a_dict_input_are_estimated_and_cast(how: dict[str, object]) -> None:
    """Until 2026-12-07 the profile moved and cast only inputs that were tensors themselves:
    a dict of tensors stayed on the CPU for an estimate on meta, and in fp32 for a bf16 one."""
    x = torch.randn(8, 16)
    plan = autopipe.plan(_DictIn(), ({"x": x, "y": x},), num_stages=2, **how)  # type: ignore[arg-type]
    assert plan.num_stages == 2 and plan.predicted.iteration_s > 0


@pytest.mark.parametrize("bad", [{"time_limit": 0}, {"time_limit": float("inf")}, {"mip_gap": 5}])
def test_bad_solver_options_are_refused_before_profiling(bad: dict[str, float], monkeypatch: pytest.MonkeyPatch) -> None:
    import autopipe.api as api

    monkeypatch.setattr(api, "trace", lambda *a, **k: pytest.fail("traced before the options were checked"))
    spec = example_spec("mlp")
    with pytest.raises(PlanError):
        autopipe.plan(spec.model, spec.example_inputs, num_stages=2, **bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [{"max_blocks": 0}, {"max_blocks": -3}, {"max_blocks": 2.5}])
def test_a_bad_max_blocks_is_refused(bad: dict[str, float]) -> None:
    """The CLI refused --max-blocks 0; the API planned on as if it were not given (until 2026-12-07)."""
    spec = example_spec("mlp")
    with pytest.raises(PlanError, match="max_blocks = "):
        autopipe.plan(spec.model, spec.example_inputs, num_stages=2, profile="estimate", **bad)  # type: ignore[arg-type]


def test_example_kwargs_that_are_no_dict_are_refused() -> None:
    """A list gave a TypeError from dict() inside autopipe.trace (until 2026-12-07)."""
    from autopipe.errors import ExampleInputError

    spec = example_spec("mlp")
    with pytest.raises(ExampleInputError, match="example_kwargs must be a dict"):
        autopipe.plan(spec.model, spec.example_inputs, example_kwargs=[1],  # type: ignore[arg-type]
                      num_stages=2, profile="estimate")


@pytest.mark.parametrize(("how", "message"), [
    ({"profile": "measure", "device_spec": "h200"},
     "device_spec='h200' applies only with profile='estimate', but profile='measure' times the model here"),
    ({"profile": "PROFILE", "device_spec": "a100"}, "device_spec='a100' applies only with profile='estimate'"),
    ({"profile": "PROFILE", "dtype": "bf16"}, "dtype='bf16' applies only when autopipe profiles the model"),
])
def test_profiling_options_the_profile_does_not_use_are_refused(how: dict[str, str], message: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI refuses --device-spec or --dtype with --profile; until 2026-12-07 the API planned
    on the saved profile (or measured here) as if they had been applied."""
    import autopipe.api as api

    monkeypatch.setattr(api, "trace", lambda *a, **k: pytest.fail("traced before the options were checked"))
    spec = example_spec("mlp")
    given = {k: (str(Path(__file__).parents[1] / "profiles" / "cpu" / "mlp.json") if v == "PROFILE" else v)
             for k, v in how.items()}
    with pytest.raises(PlanError, match=message.replace("(", r"\(")) as info:
        autopipe.plan(spec.model, spec.example_inputs, num_stages=2, **given)  # type: ignore[arg-type]
    assert info.value.hint and info.value.hint.startswith("drop ")
