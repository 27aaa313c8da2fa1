"""autopipe/runtime/optim.py and autopipe/_optimizers.py: the optimizers, fp32 master weights for 16-bit parameters."""

from __future__ import annotations

import math

import pytest
import torch

from autopipe._optimizers import build_optimizer
from autopipe.errors import AutopipeError
from autopipe.runtime.optim import MasterWeights, TrainConfig, make_optimizer


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "sgd-momentum"])
def test_bf16_parameters_step_on_fp32_masters(name: str) -> None:
    torch.manual_seed(0)
    weights = [torch.randn(64, 32), torch.randn(32)]
    params = [torch.nn.Parameter(w.to(torch.bfloat16)) for w in weights]
    # the reference: torch's optimizer on fp32 copies of the bf16 values, rounded after each step
    masters = [torch.nn.Parameter(p.detach().float()) for p in params]
    config = TrainConfig(steps=1, optimizer=name, lr=1e-2)
    opt = make_optimizer(params, config)
    ref = make_optimizer(masters, config)
    assert isinstance(opt, MasterWeights) and ref is not None and not isinstance(ref, MasterWeights)
    for _ in range(3):
        grads = [torch.randn_like(p) for p in params]
        opt.zero_grad(set_to_none=True)
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        for m, g in zip(masters, grads):
            m.grad = g.float()
        ref.step()
        for p, m in zip(params, masters):
            assert p.dtype == torch.bfloat16
            torch.testing.assert_close(p.detach(), m.detach().to(torch.bfloat16), rtol=0, atol=0)
    assert all(m.grad is None for m in opt.masters)  # fp32 gradient copies freed after the step
    state = next(iter(opt.inner.state.values()), {})
    assert all(v.dtype == torch.float32 for v in state.values() if isinstance(v, torch.Tensor) and v.dim())


def test_small_updates_survive_in_the_masters() -> None:
    # bf16 cannot hold 1 + 1e-4: Adam on the bf16 weight itself would never move it
    p = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    opt = make_optimizer([p], TrainConfig(steps=1, optimizer="sgd", lr=1e-4))
    assert opt is not None
    for _ in range(100):
        p.grad = -torch.ones_like(p)
        opt.step()
    assert p.detach().float().mean().item() == pytest.approx(1.01, abs=4e-3)


def test_fp32_parameters_use_torch_directly() -> None:
    p = torch.nn.Parameter(torch.ones(3))
    assert isinstance(make_optimizer([p], TrainConfig(steps=1)), torch.optim.Adam)
    assert make_optimizer([torch.nn.Parameter(torch.ones(1), requires_grad=False)],
                          TrainConfig(steps=1)) is None


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_states_made_up_front_step_the_same_bits(name: str) -> None:
    """[Note: Adam's states made up front]: CPU Adam holds its fresh state before any step,
    and steps exactly as torch's own fused Adam that makes it in its first step."""
    gen = torch.Generator().manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(50, 30, generator=gen)), torch.nn.Parameter(torch.randn(7, generator=gen))]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt = build_optimizer(ours, name, 1e-2)
    assert isinstance(opt, torch.optim.Optimizer)
    assert all(not opt.state[p]["exp_avg"].any() and float(opt.state[p]["step"]) == 0.0 for p in ours)
    ref = (torch.optim.AdamW if name == "adamw" else torch.optim.Adam)(theirs, lr=1e-2, fused=True)
    for _ in range(3):
        for p, q in zip(ours, theirs):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.clone()
        opt.step()
        ref.step()
    assert all(torch.equal(p, q) for p, q in zip(ours, theirs))


@pytest.mark.parametrize(("field", "value", "said"), [
    ("lr", math.inf, "--lr is inf"),  # trained on: every loss after the first NaN
    ("lr", 0.0, "--lr is 0.0"),
    ("timeout_s", math.inf, "--timeout is inf"),  # an OverflowError from the rendezvous, on every rank
    ("timeout_s", math.nan, "--timeout is nan"),
])
def test_train_config_refuses_what_cannot_train(field: str, value: float, said: str) -> None:
    with pytest.raises(AutopipeError, match=said):
        TrainConfig(steps=2, **{field: value})
