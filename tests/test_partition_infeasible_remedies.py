"""Tests for autopipe/partition/infeasible.py's hints: every remedy an infeasible plan names,
applied, plans ([Note: remedies that fit])."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import pytest
import torch

from autopipe import ModelSpec
from autopipe._units import parse_size
from autopipe.cli.main import main
from autopipe.errors import InfeasiblePlanError
from autopipe.partition import plan_profile, planner
from autopipe.partition.ilp import IlpResult
from autopipe.partition.synthetic import synthetic_profile
from autopipe.profile.profile import Profile
from autopipe.spec import cross_entropy

_FLAGS = {"--stages": ("num_stages", int), "--microbatches": ("microbatches", int),
          "--recompute": ("recompute", str), "--optimizer": ("optimizer", str),
          "--memory": ("memory_limit", str)}


def qwen2_moe() -> ModelSpec:
    """A Qwen2-57B-A14B-shaped Qwen2-MoE made small, on meta, in bf16, one sample a
    micro-batch: routed experts whose weights are most of each layer, a shared expert."""
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    cfg = Qwen2MoeConfig(num_hidden_layers=4, hidden_size=512, num_experts=16, moe_intermediate_size=512,
                         num_experts_per_tok=4, shared_expert_intermediate_size=2048,
                         num_attention_heads=8, num_key_value_heads=2, vocab_size=4096,
                         intermediate_size=1024, decoder_sparse_step=1, max_position_embeddings=128,
                         use_cache=False, router_aux_loss_coef=0.0, output_router_logits=False,
                         tie_word_embeddings=False)
    with torch.device("meta"):
        model = Qwen2MoeForCausalLM(cfg).to(torch.bfloat16)

    def batch(n: int, step: int = 0) -> tuple[tuple[torch.Tensor], torch.Tensor]:
        tokens = torch.randint(0, cfg.vocab_size, (n, 65), generator=torch.Generator().manual_seed(step))
        return (tokens[:, :-1],), tokens[:, 1:]

    return ModelSpec(model=model, example_inputs=batch(1)[0], loss_fn=cross_entropy, batch=batch,
                     name="qwen2-moe")


@pytest.fixture(scope="module")
def moe(tmp_path_factory: pytest.TempPathFactory) -> Profile:
    """``qwen2_moe``'s costs estimated for an H100."""
    out = tmp_path_factory.mktemp("moe") / "profile.json"
    assert main(["profile", f"{__file__}:qwen2_moe", "--device-spec", "h100", "-o", str(out)]) == 0
    return Profile.load(out)


def applied(remedy: str) -> dict[str, Any]:
    """The options a remedy names, as ``plan_profile`` takes them; each ``--flag`` in it must be one."""
    flags = re.findall(r"--([\w-]+)(?: (\S+))?", remedy)
    assert flags, f"the remedy {remedy!r} names no option"
    out: dict[str, Any] = {}
    for flag, value in flags:
        assert f"--{flag}" in _FLAGS, f"the remedy {remedy!r} names --{flag}, which plan does not take here"
        name, kind = _FLAGS[f"--{flag}"]
        out[name] = kind(value.rstrip(")"))
    return out


def remedies(err: InfeasiblePlanError) -> list[str]:
    """The remedies a hint names: ``try A; or B; or C``."""
    hint = err.hint or ""
    assert hint.startswith("try "), hint
    return hint[len("try "):].split("; or ")


def check_remedies(profile: Profile, options: dict[str, Any]) -> list[str]:
    """Plan ``options``, which fit nowhere; apply each remedy the error names and plan again
    (``plan_profile`` raises where a plan does not fit). Returns the remedies."""
    with pytest.raises(InfeasiblePlanError) as info:
        plan_profile(profile, **options)
    named = remedies(info.value)
    assert "smaller micro-batches" not in (info.value.hint or "")  # every profile here: one sample
    for remedy in named:
        change = applied(remedy)
        assert any(options.get(k) != v for k, v in change.items()), f"{remedy!r} is in effect already"
        plan = plan_profile(profile, **{**options, **change})
        limit = parse_size(change.get("memory_limit", options["memory_limit"]))
        assert all(s.memory.total <= limit for s in plan.stages), remedy
    return named


@pytest.mark.parametrize("method", ["dp", "ilp"])
def test_an_moe_that_fits_nowhere_is_told_what_fits(moe: Profile, method: str) -> None:
    """The Qwen2-57B-A14B case made small: under --recompute full nothing fits 4 stages, and the
    error named only "smaller micro-batches", at one sample a micro-batch already (the
    stage count searched was priced keeping every recomputed block's input: the experts'
    weights, for every micro-batch in flight). Now each remedy named fits."""
    # the DP on the default blocks, where the stage count searched was none; the ILP's
    # solves on fewer
    options = dict(num_stages=4, memory_limit="350MB", recompute="full", method=method,
                   max_blocks=400 if method == "dp" else 100, time_limit=10.0)
    named = check_remedies(moe, options)
    assert any(r.startswith("--stages") for r in named), named
    assert any(r.startswith("--memory") or "(--memory" in r for r in named), named
    assert any(r.startswith("--optimizer") for r in named), named


@pytest.mark.parametrize("options", [
    dict(num_stages=2, microbatches=16, schedule="gpipe", memory_limit="800MiB", recompute="none"),
    dict(num_stages=2, microbatches=16, memory_limit="400MiB", recompute="none", method="dp"),
], ids=["gpipe", "adam"])
def test_each_remedy_named_fits(options: dict[str, Any]) -> None:
    check_remedies(synthetic_profile(40, seed=2), options)


def test_a_tiny_device_is_told_the_memory_that_fits() -> None:
    """On a tiny device the only remedy is memory, a size ``--memory`` reads."""
    named = check_remedies(synthetic_profile(40, seed=2), dict(num_stages=4, microbatches=8, memory_limit="20MiB"))
    assert len(named) == 1 and re.fullmatch(r"devices with \d+ MiB each \(--memory \d+MiB\)", named[0])


@pytest.mark.parametrize("recompute", ["none", "full"])
def test_a_mip_that_finds_nothing_where_no_chain_split_fits_explains(
        moe: Profile, recompute: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--recompute none`` or ``full`` whose MIP finds nothing in its time, where no chain
    split fits either: the error explains and names what fits (it said only "raise the time
    limit, or lower --max-blocks", as on the Qwen2-57B-A14B shape, ``full``)."""
    real = planner.solve_ilp

    def unsolved(*args: Any, **kwargs: Any) -> IlpResult:
        return replace(real(*args, **kwargs), stage_of=None, status="unsolved")

    options = dict(num_stages=4, memory_limit="350MB", recompute=recompute, max_blocks=100, time_limit=10.0)
    with monkeypatch.context() as patched:
        patched.setattr(planner, "solve_ilp", unsolved)
        with pytest.raises(InfeasiblePlanError) as info:
            plan_profile(moe, **options)
    err = info.value
    assert err.message.startswith("the MIP solver found no partition in ")
    assert "no partition into 4 stages fits in memory" in err.message
    named = remedies(err)
    assert named[-1] == "raise the time limit (--time-limit) for a proof that no other partition fits either"
    for remedy in named[:-1]:
        plan = plan_profile(moe, **{**options, **applied(remedy)})
        limit = parse_size(applied(remedy).get("memory_limit", options["memory_limit"]))
        assert all(s.memory.total <= limit for s in plan.stages), remedy


def test_one_sample_micro_batches_are_named_only_where_they_hold_more() -> None:
    """Micro-batches of one sample are named (an estimate: the profile's activations scaled
    down) where the profile's hold more than one, and never at one already."""
    options = dict(num_stages=2, microbatches=4, schedule="gpipe", memory_limit="250MiB", recompute="none")
    one = synthetic_profile(40, seed=2, param_prob=0.1)  # activations most of each stage
    with pytest.raises(InfeasiblePlanError) as info:
        plan_profile(one, **options)
    assert not any("sample" in r for r in remedies(info.value))
    four = replace(one, microbatch_shape=[[4]])
    with pytest.raises(InfeasiblePlanError) as info:
        plan_profile(four, **options)
    named = [r for r in remedies(info.value) if "sample" in r]
    assert named == ["micro-batches of 1 sample, not 4 (--batch-size 4 --microbatches 4; estimated: "
                     "this profile's activations scaled down)"]
