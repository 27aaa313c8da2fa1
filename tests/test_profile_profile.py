"""Tests for autopipe/profile/profile.py: Profile JSON round trip and bad files."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

import autopipe
from autopipe import ModelSpec
from autopipe.errors import ProfileError
from autopipe.partition.planner import plan_profile
from autopipe.plan_format import Plan
from autopipe.profile import Profile, estimate, load_device_spec, measure

Traced = dict[str, tuple[ModelSpec, autopipe.Graph]]


@pytest.fixture(scope="module")
def profiles(traced: Traced) -> list[Profile]:
    spec, graph = traced["gpt2"]  # tied weights, non-tensor outputs, export graph
    return [measure(graph, spec.example_inputs, warmup=0, repeats=1),
            estimate(graph, spec.example_inputs, dtype="bf16")]


def test_round_trip_unchanged(profiles: list[Profile], tmp_path: Path) -> None:
    for i, p in enumerate(profiles):
        path = tmp_path / f"p{i}.json"
        p.save(path)
        q = Profile.load(path)
        assert q == p
        q.save(tmp_path / "again.json")
        assert (tmp_path / "again.json").read_bytes() == path.read_bytes()
        assert json.loads(path.read_text())["schema"] == "autopipe.profile/1"


def test_json_has_the_documented_fields(profiles: list[Profile]) -> None:
    data = profiles[0].to_json()
    assert {"schema", "device", "dtype", "microbatch_shape", "nodes", "edges"} <= set(data)
    node = data["nodes"][5]
    assert {"name", "op", "target", "module", "forward_s", "backward_input_s", "backward_weight_s",
            "activation_bytes", "output_bytes", "param_bytes", "params"} <= set(node)
    assert all(len(e) == 3 for e in data["edges"])


def test_the_libraries_workspaces_come_with_the_profile(profiles: list[Profile]) -> None:
    """[Note: the libraries' workspaces]: none on the CPU (nor a key for them), the device
    spec's in an estimate; a plan charges each stage's rank them and writes them."""
    measured, estimated = profiles
    assert measured.library_bytes == 0 and "library_bytes" not in measured.to_json()
    assert estimated.library_bytes == load_device_spec("h100").library_bytes > 0
    assert estimated.to_json()["library_bytes"] == estimated.library_bytes
    plan = plan_profile(estimated, num_stages=2, microbatches=4)
    assert [s.memory.library for s in plan.stages] == [estimated.library_bytes] * 2
    bare = plan_profile(dataclasses.replace(estimated, library_bytes=0), num_stages=2, microbatches=4)
    assert [s.nodes for s in bare.stages] == [s.nodes for s in plan.stages]
    assert [a.memory.total - b.memory.total for a, b in zip(plan.stages, bare.stages)] == [estimated.library_bytes] * 2
    assert "library" not in bare.to_json()["stages"][0]["memory"]
    assert Plan.from_json(plan.to_json()) == plan


def test_corrupt_file_names_the_file(profiles: list[Profile], tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    profiles[0].save(path)
    path.write_text(path.read_text()[: 500])  # truncated
    with pytest.raises(ProfileError, match=r"p\.json: not valid JSON"):
        Profile.load(path)


def test_wrong_schema(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"schema": "autopipe.plan/1", "stages": []}))
    with pytest.raises(ProfileError, match=r"plan\.json: schema is 'autopipe.plan/1', expected 'autopipe.profile/1'"):
        Profile.load(path)


@pytest.mark.parametrize(("edit", "match"), [
    (lambda d: d.pop("nodes"), "malformed profile .*KeyError: 'nodes'"),
    (lambda d: d["nodes"][3].update(forward_s=-1.0), "forward_s = -1.0 is not a non-negative time"),
    (lambda d: d["nodes"][3].update(colour="red"), "malformed profile .*colour"),
    (lambda d: d["edges"].append(["nope", "x", 4]), "edge nope→x names an unknown node"),
    # null where an object or array belongs: an AttributeError (None.items()) naming nothing
    (lambda d: d.update(params=None), "malformed profile .*'params' is null, expected an object"),
    (lambda d: d.update(meta=None), "malformed profile .*'meta' is null, expected an object"),
    (lambda d: d.update(optimizer=None), "malformed profile .*'optimizer' is null, expected an object"),
    (lambda d: d.update(runtime=None), "malformed profile .*'runtime' is null, expected an object"),
    (lambda d: d.update(tied=None), "malformed profile .*'tied' is null, expected an array"),
    (lambda d: d.update(nodes=None), "malformed profile .*'nodes' is null, expected an array"),
    (lambda d: d["nodes"].__setitem__(3, None), "malformed profile .*'nodes\\[3\\]' is null"),
    (lambda d: d["nodes"][3].update(params=None), "malformed profile .*'nodes\\[3\\].params' is null"),
    (lambda d: d.update(loss=[]), "malformed profile .*'loss' is array, expected an object"),
])
def test_bad_contents(profiles: list[Profile], tmp_path: Path, edit: object, match: str) -> None:
    data = profiles[0].to_json()
    edit(data)  # type: ignore[operator]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ProfileError, match=match) as info:
        Profile.load(path)
    assert str(path) in info.value.message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="no such file"):
        Profile.load(tmp_path / "none.json")


def test_embeddings_are_marked_and_saved_only_where_true(tmp_path: Path) -> None:
    """A leaf ``nn.Embedding`` (fx) and ``aten.embedding`` (export) are embeddings; a leaf that
    renormalises its rows (``max_norm``) is not (exported, it is a lookup whose weight a
    renormalisation reads too), nor is anything else. The field is written
    only where true (files of models without one are what they were) and read back."""
    import torch

    class Lookup(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(50, 8)
            self.renorm = torch.nn.Embedding(50, 8, max_norm=1.0)
            self.proj = torch.nn.Linear(8, 8)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.proj(self.embed(ids) + self.renorm(ids))

    ids = torch.randint(0, 50, (2, 4))
    for frontend, want in (("fx", ["embed"]), ("export", ["embedding", "embedding_1"])):
        profile = estimate(autopipe.trace(Lookup(), (ids,), frontend=frontend), (ids,))
        assert [n.name for n in profile.nodes if n.embedding] == want, frontend
        assert [n.name for n in profile.nodes if n.is_embedding()] == want, frontend
        profile.save(tmp_path / "p.json")
        data = json.loads((tmp_path / "p.json").read_text())
        assert [n["name"] for n in data["nodes"] if "embedding" in n] == want
        assert Profile.load(tmp_path / "p.json") == profile


def test_a_dtype_written_on_the_2026_12_05_version_reads_as_nothing() -> None:
    """For one day profiles wrote the dtype of values with a gradient, and plans of their
    sends, when a cut sent one message per such dtype; a cut now sends one ([Note: one
    message per cut]), and those files load as if they had none."""
    from tests.conftest import example_spec
    from tests.runtime_cases import TINY

    spec = example_spec("llama", **{**TINY["llama"], "dtype": "bfloat16"})
    graph = autopipe.trace(spec.model, spec.example_inputs, spec.example_kwargs)
    prof = estimate(graph, spec.example_inputs, spec.example_kwargs, progress=False)
    data = prof.to_json()
    assert not any("dtype" in n for n in data["nodes"])
    for n in data["nodes"]:
        n["dtype"] = "bfloat16"
    assert Profile.from_json(data) == prof
    plan = plan_profile(prof, num_stages=2, microbatches=2)
    old = plan.to_json()
    for send in old["stages"][0]["sends"]:
        send["dtype"] = "bfloat16"
    assert Plan.from_json(old) == plan
