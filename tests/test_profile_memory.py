"""Tests for autopipe/profile/memory.py."""

from __future__ import annotations

import pytest

from autopipe.errors import AutopipeError
from autopipe.profile.memory import param_memory


def test_adam_fp32() -> None:
    m = param_memory(400, element_size=4, optimizer="adam")
    assert (m.params, m.grads, m.optimizer, m.total) == (400, 400, 800, 1600)


def test_adam_bf16_keeps_master_weights() -> None:
    m = param_memory(200, element_size=2, optimizer="adam")  # 100 parameters
    assert (m.params, m.grads, m.optimizer) == (200, 200, 100 * 12)


def test_sgd_variants() -> None:
    assert param_memory(400, optimizer="sgd").optimizer == 0
    assert param_memory(400, optimizer="sgd-momentum").optimizer == 400
    assert param_memory(400, optimizer="none").total == 400


def test_unknown_optimizer() -> None:
    with pytest.raises(AutopipeError, match="unknown optimizer 'lion'"):
        param_memory(4, optimizer="lion")


def test_the_optimizer_steps_temporaries() -> None:
    """[Note: the optimizer step's temporaries]: Adam's foreach sqrt of its fp32 states, and
    the fp32 gradients of 16-bit masters; not part of what is held all the time."""
    assert param_memory(400, element_size=4, optimizer="adam").step == 400
    assert param_memory(400, element_size=4, optimizer="adamw").step == 400
    assert param_memory(200, element_size=2, optimizer="adam").step == 100 * 8
    assert param_memory(400, optimizer="sgd-momentum").step == 0
    assert param_memory(200, element_size=2, optimizer="sgd").step == 100 * 4
    assert param_memory(400, optimizer="none").step == 0
    assert param_memory(400, optimizer="adam").total == 1600


def test_fused_adam_makes_no_temporaries() -> None:
    """CPU ranks step Adam fused, in place: nothing but the 16-bit masters' fp32 gradients."""
    assert param_memory(400, element_size=4, optimizer="adam", fused=True).step == 0
    assert param_memory(400, element_size=4, optimizer="adamw", fused=True).step == 0
    assert param_memory(200, element_size=2, optimizer="adam", fused=True).step == 100 * 4
    assert param_memory(400, optimizer="adam", fused=True).total == 1600


def test_cpu_devices_plan_the_fused_step() -> None:
    """The planner charges Adam's temporaries on GPUs only (what ``autopipe train`` runs)."""
    from autopipe.partition.problem import Config, from_profile
    from autopipe.plan_format import Device
    from autopipe.profile.profile import Profile

    from .conftest import ROOT

    prof = Profile.load(ROOT / "profiles" / "cpu" / "gpt2.json")

    def steps(kind: str) -> set[int]:
        cfg = Config(num_stages=2, microbatches=2, schedule="1f1b", link_bandwidth=1e9,
                     devices=tuple(Device(name=f"{kind}:{i}", memory=0) for i in range(2)))
        return {m.step for m in from_profile(prof, cfg).param_mem.values()}

    assert steps("cpu") == {0}
    assert 0 not in steps("cuda")


def test_embedding_grad_bytes() -> None:
    """Rows of a step's tokens, each with up to two pages shared with its neighbours; whole
    where no indices were saved; never more than the weight."""
    from autopipe.profile.memory import embedding_grad_bytes

    # 64 int64 tokens of 4 KiB rows, 2 micro-batches: 2 × (256 KiB + 128 tokens × 8 KiB)
    assert embedding_grad_bytes(131_072_000, 262_144, 512, 2) == 2 * (262_144 + 128 * 8192)
    assert embedding_grad_bytes(131_072_000, 262_144, 0, 2) == 131_072_000
    assert embedding_grad_bytes(3 << 20, 1 << 20, 4096, 8) == 3 << 20


def _embedding_profile(vocab_bytes: int, tied: bool) -> object:
    """input → embedding (one weight) → linear head (its own weight, or the embedding's) → output."""
    from autopipe.profile.profile import NodeProfile, Profile

    def node(name: str, op: str, target: str, **kw: object) -> NodeProfile:
        base = dict(name=name, op=op, target=target, module="", forward_s=1e-3, backward_input_s=1e-3,
                    backward_weight_s=0.0, activation_bytes=0, output_bytes=4096, param_bytes=0)
        base.update(kw)
        return NodeProfile(**base)  # type: ignore[arg-type]

    head = ({"shared_params": ("emb.weight",)} if tied
            else {"params": ("head.weight",), "param_bytes": vocab_bytes})
    nodes = (node("ids", "placeholder", "ids"),
             node("embedding", "call_function", "aten.embedding.default", params=("emb.weight",),
                  param_bytes=vocab_bytes, activation_bytes=512, output_bytes=262_144),
             node("linear", "call_function", "aten.linear.default", **head),
             node("output", "output", "output"))
    edges = (("ids", "embedding", 512), ("embedding", "linear", 262_144), ("linear", "output", 4096))
    params = {"emb.weight": vocab_bytes} | ({} if tied else {"head.weight": vocab_bytes})
    return Profile(device="cpu", dtype="float32", microbatch_shape=[[1, 64]], nodes=nodes, edges=edges,
                   params=params)


@pytest.mark.parametrize(("kind", "schedule", "tied", "whole"),
                         [("cpu", "1f1b", False, False), ("cuda", "1f1b", False, True),
                          ("cpu", "zb-h1", False, True), ("cpu", "1f1b", True, True)])
def test_cpu_devices_plan_an_embedding_gradient_on_zero_pages(kind: str, schedule: str, tied: bool,
                                                               whole: bool) -> None:
    """[Note: an embedding's gradient on zero pages]: charged as the rows a step writes on CPU
    devices, for an fp32 embedding weight read once, under a schedule with one backward;
    whole elsewhere, and its block is then not recomputed (recomputing would lose it)."""
    from autopipe.partition.problem import Config, from_profile
    from autopipe.plan_format import Device

    cfg = Config(num_stages=2, microbatches=2, schedule=schedule, link_bandwidth=1e9,
                 devices=tuple(Device(name=f"{kind}:{i}", memory=0) for i in range(2)))
    problem = from_profile(_embedding_profile(131_072_000, tied), cfg)  # type: ignore[arg-type]
    grads = problem.param_mem["emb.weight"].grads
    assert grads == (131_072_000 if whole else 2 * (262_144 + 128 * 8192))
    assert problem.blocks[1].recomputable == whole
    if not tied:
        assert problem.param_mem["head.weight"].grads == 131_072_000


def test_replicas_plan_an_embedding_gradient_whole() -> None:
    """A data-parallel all-reduce writes all of it."""
    from autopipe.partition.problem import Config, from_profile
    from autopipe.partition.replicas import GradSync
    from autopipe.plan_format import Device

    cfg = Config(num_stages=2, microbatches=2, schedule="1f1b", link_bandwidth=1e9,
                 devices=tuple(Device(name=f"cpu:{i}", memory=0) for i in range(2)))
    problem = from_profile(_embedding_profile(131_072_000, False), cfg)  # type: ignore[arg-type]
    assert problem.param_mem["emb.weight"].grads < 131_072_000
    synced = GradSync(replicas=2, bandwidth=1e9).shard(problem)
    assert synced.param_mem["emb.weight"].grads == 131_072_000
    assert GradSync(replicas=1, bandwidth=1e9).shard(problem) is problem


def test_float64_parameters_have_float64_optimizer_states() -> None:
    """Adam keeps exp_avg and exp_avg_sq in the parameter's dtype: 16 bytes each of a float64
    parameter, counted as 8 (fp32) until 2026-12-07."""
    import torch

    from autopipe.profile.memory import param_memory

    p = torch.nn.Parameter(torch.randn(10, dtype=torch.float64))
    p.grad = torch.zeros_like(p)
    adam = torch.optim.Adam([p])
    adam.step()
    held = sum(t.numel() * t.element_size() for t in adam.state[p].values() if t.dim() > 0)
    assert param_memory(80, element_size=8, optimizer="adam").optimizer == held == 160
    assert param_memory(40, element_size=4, optimizer="adam").optimizer == 80
