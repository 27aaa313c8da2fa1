"""Tests for autopipe/quality/compare.py and `autopipe check --baseline`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from autopipe.cli.main import main
from autopipe.errors import PlanMismatchError
from autopipe.plan_format import (
    DataParallel,
    Device,
    Plan,
    Predicted,
    SolverInfo,
    Stage,
    StageMemory,
)
from autopipe.quality.compare import compare_plans


def _plan(times: list[float], mems: list[int], *, cut: int = 2, fingerprint: str = "abc") -> Plan:
    nodes = [f"n{i}" for i in range(6)]
    groups = [nodes[:cut], nodes[cut:]] if len(times) == 2 else [nodes]
    stages = tuple(
        Stage(index=i, device=f"d{i}", nodes=tuple(g), modules=(), forward_s=t / 3, backward_s=2 * t / 3,
              memory=StageMemory(params=m, grads=0, optimizer=0, activations=0, buffers=0, total=m))
        for i, (g, t, m) in enumerate(zip(groups, times, mems)))
    m = 4
    it = sum(times) + (m - 1) * max(times)
    return Plan(graph_fingerprint=fingerprint, schedule="1f1b", microbatches=m,
                devices=tuple(Device(name=f"d{i}", memory=1000) for i in range(len(times))),
                stages=stages, predicted=Predicted(iteration_s=it, bubble_fraction=0.1),
                solver=SolverInfo(method="ilp", status="optimal", objective_s=it,
                                  lower_bound_s=it, gap=0.0, seconds=0.1))


def test_better_or_equal_plan_passes() -> None:
    old = _plan([1.0, 2.0], [100, 100], cut=2)
    new = _plan([1.5, 1.5], [100, 100], cut=3)
    result = compare_plans(new, old)
    assert not result.worse
    assert "n2: stage 1 -> 0" in result.report()
    assert not compare_plans(old, old).worse


def test_slower_plan_fails_with_diff() -> None:
    old = _plan([1.5, 1.5], [100, 100], cut=3)
    new = _plan([1.0, 2.0], [100, 100], cut=2)
    result = compare_plans(new, old, tolerance=0.01)
    assert result.worse
    assert "iteration time" in result.reasons[0]
    # within tolerance it passes
    assert not compare_plans(new, old, tolerance=0.5).worse


def test_more_memory_and_overflow_fail() -> None:
    old = _plan([1.0, 1.0], [100, 100])
    assert compare_plans(_plan([1.0, 1.0], [100, 200]), old).worse
    result = compare_plans(_plan([1.0, 1.0], [100, 2000]), _plan([1.0, 1.0], [100, 1999]))
    assert any("has 1000 B" in r for r in result.reasons)


def test_plans_of_different_batches_compare_per_sample() -> None:
    """A plan of 4 micro-batches a step against a baseline of 6: 7% less time a step is 39%
    more a sample (it was OK); 40% more a step over 6 micro-batches against 4 is faster."""
    def with_batch(p: Plan, m: int, step_s: float) -> Plan:
        return dataclasses.replace(p, microbatches=m,
                                   predicted=dataclasses.replace(p.predicted, iteration_s=step_s))

    base = _plan([1.0, 1.0], [100, 100])
    six = with_batch(base, 6, 10.0)
    result = compare_plans(with_batch(base, 4, 9.3), six)
    assert result.worse and "per sample is +39.5%" in result.reasons[0]
    assert "a step trains 4 micro-batches, the baseline's 6 micro-batches" in result.report()
    assert not compare_plans(with_batch(base, 6, 14.0), with_batch(base, 4, 10.0)).worse
    # data-parallel replicas count: 2 replicas of 3 micro-batches train what 6 do
    dp = DataParallel(degree=2, ranks=((0, 2), (1, 3)), batch_size=12)
    two = dataclasses.replace(with_batch(base, 3, 10.0), data_parallel=dp)
    assert "per micro-batch" not in compare_plans(two, six).report()
    assert "12 samples (6 micro-batches)" in compare_plans(two, with_batch(base, 4, 9.0)).report()


def test_measured_plans_are_said_to_vary() -> None:
    """A plan measured on a machine carries its noise: the report says so, and says when
    the cuts are the same (the verdict is the tolerance's, as for any plan)."""
    def measured(p: Plan) -> Plan:
        return dataclasses.replace(p, options={"profile_method": "measure"})

    old = measured(_plan([1.0, 2.0], [100, 100], cut=2))
    same = compare_plans(measured(_plan([1.0, 2.2], [100, 100], cut=2)), old)
    assert same.worse and "the cuts are the same, so the difference is that variation" in same.report()
    moved = compare_plans(measured(_plan([1.5, 1.5], [100, 100], cut=3)), old).report()
    assert "vary from run to run" in moved and "the cuts are the same" not in moved
    assert "vary" not in compare_plans(_plan([1.0, 2.2], [100, 100]), _plan([1.0, 2.0], [100, 100])).report()


def test_different_models_refused() -> None:
    with pytest.raises(PlanMismatchError, match="different models"):
        compare_plans(_plan([1.0, 1.0], [1, 1], fingerprint="x"), _plan([1.0, 1.0], [1, 1]))


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = _plan([1.5, 1.5], [100, 100], cut=3), _plan([1.0, 2.0], [100, 100], cut=2)
    other = dataclasses.replace(good, graph_fingerprint="zzz")
    for name, p in (("good", good), ("bad", bad), ("other", other)):
        p.save(tmp_path / f"{name}.json")
    (tmp_path / "corrupt.json").write_text('{"schema": "autopipe.plan/1", "stages": [')
    base = ["check", "--baseline", str(tmp_path / "good.json")]
    assert main([*base[:1], str(tmp_path / "good.json"), *base[1:]]) == 0
    assert main(["check", str(tmp_path / "bad.json"), "--baseline", str(tmp_path / "good.json")]) == 1
    out = capsys.readouterr().out
    assert "WORSE" in out and "stage" in out
    assert main(["check", str(tmp_path / "other.json"), "--baseline", str(tmp_path / "good.json")]) == 2
    assert "different models" in capsys.readouterr().err
    assert main(["check", str(tmp_path / "corrupt.json"), "--baseline", str(tmp_path / "good.json")]) == 2
    err = capsys.readouterr().err
    assert "corrupt.json" in err and "not valid JSON" in err


def test_check_spec_replans_the_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`autopipe check PLAN --spec SPEC` re-plans with PLAN's options (estimated: deterministic)."""
    from .conftest import ROOT

    spec = f"{ROOT}/examples/mlp.py:build"
    plan = tmp_path / "plan.json"
    assert main(["plan", spec, "--spec-arg", "layers=6", "--stages", "2", "--device-spec", "h100",
                 "-o", str(plan)]) == 0
    capsys.readouterr()
    assert main(["check", str(plan), "--spec", spec, "--spec-arg", "layers=6",
                 "-o", str(tmp_path / "new.json")]) == 0
    assert "OK: not worse" in capsys.readouterr().out
    assert Plan.load(tmp_path / "new.json").stage_of == Plan.load(plan).stage_of
    # another model (one more layer) is refused before re-planning, as train refuses it
    assert main(["check", str(plan), "--spec", spec, "--spec-arg", "layers=7"]) == 2
    assert "the plan was made for another model" in capsys.readouterr().err


def test_check_spec_replans_a_measured_plan_as_it_was_made(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A plan measured with --no-refine --no-runtime-costs is re-planned so (both were on
    whatever the plan said until 2026-12-06), and the report says its times vary."""
    from .conftest import ROOT

    spec = f"{ROOT}/examples/mlp.py:build"
    plan, new = tmp_path / "plan.json", tmp_path / "new.json"
    assert main(["plan", spec, "--spec-arg", "layers=4", "--stages", "2", "--no-refine",
                 "--no-runtime-costs", "-o", str(plan)]) == 0
    capsys.readouterr()
    code = main(["check", str(plan), "--spec", spec, "--spec-arg", "layers=4", "-o", str(new)])
    out = capsys.readouterr().out
    assert code in (0, 1) and "vary from run to run" in out
    again = Plan.load(new)
    assert "refine" not in again.options and "runtime" not in again.options
    assert again.options["profile_method"] == "measure"


def test_check_spec_replans_on_the_saved_profile_given(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A plan made from a saved profile records it (name and digest); ``check --spec
    --profile`` re-plans on it: the same plan, and no note that measured times vary (until
    2026-12-07 ``check --spec`` could only measure the model again)."""
    from .conftest import ROOT

    spec, saved = f"{ROOT}/examples/mlp.py:build", str(ROOT / "profiles" / "cpu" / "mlp.json")
    plan, new = tmp_path / "plan.json", tmp_path / "new.json"
    assert main(["plan", spec, "--profile", saved, "--stages", "2", "-o", str(plan)]) == 0
    made = Plan.load(plan)
    assert made.options["profile_file"] == "mlp.json" and len(made.options["profile_sha256"]) == 16
    capsys.readouterr()
    assert main(["check", str(plan), "--spec", spec, "--profile", saved, "-o", str(new)]) == 0
    out, err = capsys.readouterr()
    assert "OK" in out and "vary from run to run" not in out and "note:" not in err
    again = Plan.load(new)
    assert [s.nodes for s in again.stages] == [s.nodes for s in made.stages]
    assert again.predicted.iteration_s == made.predicted.iteration_s
    # another file (a copy with one more byte): compared, with a note that they differ
    other = tmp_path / "other.json"
    other.write_text(Path(saved).read_text() + "\n")
    assert main(["check", str(plan), "--spec", spec, "--profile", str(other)]) in (0, 1)
    assert "is not the profile" in capsys.readouterr().err


def test_a_search_choosing_another_micro_batch_size_compares_per_step() -> None:
    """`check --spec` of a search plan (same_model): the search run again may choose micro-batches
    of another size, whose graph has another fingerprint; compared per step of one batch."""
    import autopipe
    from tests.conftest import example_spec

    spec = example_spec("mlp")
    common = dict(gpus=2, batch_size=8, profile="estimate", method="dp")
    eights = autopipe.plan(spec.model, spec.example_inputs, microbatch_sizes=[8], **common)
    fours = autopipe.plan(spec.model, spec.example_inputs, microbatch_sizes=[4], **common)
    assert eights.graph_fingerprint != fours.graph_fingerprint
    with pytest.raises(PlanMismatchError):
        compare_plans(fours, eights)
    result = compare_plans(fours, eights, same_model=True, tolerance=0.0)
    assert result.worse == (fours.predicted.iteration_s > eights.predicted.iteration_s)
    assert "micro-batch                8 ->            4" in result.report(), result.report()
