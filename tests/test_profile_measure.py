"""Tests for autopipe/profile/measure.py: per-node measurement on CPU."""

from __future__ import annotations

import platform

import pytest
import torch

import autopipe
from autopipe import ModelSpec
from autopipe.errors import ProfileError
from autopipe.profile import Profile, measure, measure_whole
from tests.conftest import EXAMPLES
from tests.models import TiedMLP

Traced = dict[str, tuple[ModelSpec, autopipe.Graph]]


@pytest.fixture(scope="module")
def mlp_profile(traced: Traced) -> Profile:
    spec, graph = traced["mlp"]
    return measure(graph, spec.example_inputs, warmup=1, repeats=3)


def test_linear_has_both_backward_halves(mlp_profile: Profile) -> None:
    node = mlp_profile.by_name["blocks_1_0"]  # a Linear whose input requires grad
    assert node.target == "blocks.1.0" and node.params
    assert node.backward_input_s > 0 and node.backward_weight_s > 0
    assert node.forward_s > 0


def test_first_linear_has_no_input_gradient(mlp_profile: Profile) -> None:
    node = mlp_profile.by_name["inp"]  # its input is the data, which needs no gradient
    assert node.backward_input_s == 0 and node.backward_weight_s > 0


def test_parameter_free_node_has_no_weight_gradient(mlp_profile: Profile) -> None:
    gelu = mlp_profile.by_name["blocks_1_1"]
    assert not gelu.params and gelu.param_bytes == 0
    assert gelu.backward_weight_s == 0 and gelu.backward_input_s > 0
    assert gelu.activation_bytes == 8 * 256 * 4  # GELU saves its input


def test_structure_follows_graph(traced: Traced, mlp_profile: Profile) -> None:
    _, graph = traced["mlp"]
    assert [n.name for n in mlp_profile.nodes] == [n.name for n in graph.nodes]
    assert mlp_profile.graph_fingerprint == graph.fingerprint
    assert sum(n.param_bytes for n in mlp_profile.nodes) == graph.total_param_bytes
    assert mlp_profile.microbatch_shape == [[8, 64]]
    assert mlp_profile.device == "cpu" and mlp_profile.dtype == "float32"
    assert mlp_profile.method == "measure"
    assert mlp_profile.meta["clock"] == "thread" and mlp_profile.meta["threads"] == 1
    for node in mlp_profile.nodes:
        if node.op in ("placeholder", "output"):
            assert node.forward_s == node.backward_s == node.activation_bytes == 0


@pytest.mark.parametrize("name", EXAMPLES)
def test_saved_bytes_add_up_to_whole_model(traced: Traced, name: str) -> None:
    spec, graph = traced[name]
    p = measure(graph, spec.example_inputs, spec.example_kwargs, warmup=0, repeats=1)
    whole = p.meta["whole_model"]["activation_bytes"]
    assert whole > 0
    assert abs(p.activation_bytes - whole) <= 0.05 * whole, (p.activation_bytes, whole)
    # the timing target is checked by benchmarks/bench_profile.py; here only sanity
    assert 0 < p.forward_s + p.backward_s < 100 * p.meta["whole_model"]["forward_backward_s"]


def test_model_is_left_alone(traced: Traced) -> None:
    spec, graph = traced["resnet"]  # batch norm: training forwards update running stats
    before = {k: v.clone() for k, v in spec.model.state_dict().items()}
    measure(graph, spec.example_inputs, warmup=0, repeats=1, dtype="bf16")
    measure(graph, spec.example_inputs, warmup=0, repeats=1)
    after = spec.model.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k
        assert after[k].dtype == v.dtype
    assert all(p.grad is None for p in spec.model.parameters())


def test_threads_restored(traced: Traced) -> None:
    spec, graph = traced["mlp"]
    before = torch.get_num_threads()
    p = measure(graph, spec.example_inputs, warmup=0, repeats=1, threads=2)
    assert torch.get_num_threads() == before
    assert p.meta["clock"] == "wall"  # two threads' CPU time is not wall time


def test_bf16_halves_sizes(traced: Traced, mlp_profile: Profile) -> None:
    spec, graph = traced["mlp"]
    p = measure(graph, spec.example_inputs, warmup=0, repeats=1, dtype="bf16")
    assert p.dtype == "bfloat16"
    assert sum(p.params.values()) * 2 == sum(mlp_profile.params.values())
    lin = "blocks_1_0"
    assert p.by_name[lin].output_bytes * 2 == mlp_profile.by_name[lin].output_bytes
    assert p.activation_bytes * 2 == mlp_profile.activation_bytes


def test_export_graph_in_bf16(traced: Traced) -> None:
    spec, graph = traced["llama"]  # dtype arguments baked in by export follow the cast
    p = measure(graph, spec.example_inputs, warmup=0, repeats=1, dtype="bf16")
    whole = p.meta["whole_model"]["activation_bytes"]
    assert p.activation_bytes == pytest.approx(whole, rel=0.05)


def test_tied_weight_counted_once() -> None:
    model = TiedMLP()
    x = torch.randint(0, 50, (4, 8))
    graph = autopipe.trace(model, (x,))
    p = measure(graph, (x,), warmup=0, repeats=1)
    assert sum(n.param_bytes for n in p.nodes) == sum(
        q.numel() * 4 for q in model.parameters())  # parameters() yields the tied one once
    head = next(n for n in p.nodes if n.shared_params)
    assert head.param_bytes == 0 and head.backward_weight_s > 0


def test_whole_model_alone(traced: Traced) -> None:
    spec, graph = traced["mlp"]
    w = measure_whole(graph, spec.example_inputs, warmup=0, repeats=2)
    assert w.forward_s > 0 and w.backward_s > 0 and w.peak_bytes is None
    assert w.activation_bytes == 141312


@pytest.mark.parametrize(("kw", "match"), [
    ({"device": "meta"}, "cannot time meta"),
    ({"device": "tpu"}, "unknown device|cannot profile"),
    ({"repeats": 0}, "repeats = 0"),
    ({"dtype": "int8"}, "unknown dtype 'int8'"),
    ({"threads": 0}, "threads = 0"),
    ({"clock": "sundial"}, "unknown clock 'sundial'"),
])
def test_bad_arguments(traced: Traced, kw: dict[str, object], match: str) -> None:
    spec, graph = traced["mlp"]
    with pytest.raises(ProfileError, match=match):
        measure(graph, spec.example_inputs, **kw)  # type: ignore[arg-type]


def test_cuda_missing_is_a_profile_error(traced: Traced) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    spec, graph = traced["mlp"]
    with pytest.raises(ProfileError, match="no CUDA device"):
        measure(graph, spec.example_inputs, device="cuda")


def test_failing_node_is_named() -> None:
    class Chol(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.linalg.cholesky(x)

    graph = autopipe.trace(Chol(), (torch.eye(3),), frontend="fx")
    with pytest.raises(ProfileError, match=r"node linalg_cholesky .* failed on cpu"):
        measure(graph, (-torch.eye(3),), warmup=0, repeats=1)  # not positive-definite


def test_wrong_inputs(traced: Traced) -> None:
    _, graph = traced["mlp"]
    with pytest.raises(autopipe.AutopipeError):
        measure(graph, (torch.randn(8, 64), torch.randn(1)))


def test_cpu_profiles_pin_malloc_as_training_does(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_",
                "GLIBC_TUNABLES"):
        monkeypatch.delenv(var, raising=False)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    graph = autopipe.trace(model, (torch.randn(2, 4),))
    pinned = measure(graph, (torch.randn(2, 4),), warmup=0, repeats=1, progress=False)
    assert pinned.meta["malloc_pinned"] is (platform.libc_ver()[0] == "glibc")
    assert pinned.meta["cpu_affinity"] >= 1
    left = measure(graph, (torch.randn(2, 4),), warmup=0, repeats=1, progress=False, pin_malloc=False)
    assert left.meta["malloc_pinned"] is False


def test_cpu_profiles_time_with_subnormals_flushed(traced: Traced, mlp_profile: Profile) -> None:
    from autopipe.profile._setup import denormals_flushed

    tiny = torch.tensor([1e-39])  # a subnormal float32
    with denormals_flushed(torch.device("cpu")) as flushed:
        inside = (tiny * 0.5).item()
    assert flushed and inside == 0.0  # [Note: subnormals at initialisation]
    assert (tiny * 0.5).item() > 0  # restored: the model's arithmetic afterwards is torch's default
    assert mlp_profile.meta["flush_denormal"] is True
