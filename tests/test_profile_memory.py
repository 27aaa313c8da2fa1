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
