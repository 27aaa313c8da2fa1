"""Tests for autopipe/runtime/group_norm.py: a group norm on a channels-last input survives
the zero-bubble weight pass ([Note: group norm in a weight pass])."""

from __future__ import annotations

import subprocess
import sys

import torch

from autopipe.runtime.group_norm import dense_on_cpu

from .conftest import ROOT


def test_dense_on_cpu_copies_only_what_has_other_strides() -> None:
    for shape in ((2, 8, 4, 4), (2, 8, 1, 1)):
        x = torch.randn(shape)
        assert dense_on_cpu(x) is x
        y = x.to(memory_format=torch.channels_last)
        dense = dense_on_cpu(y)
        assert dense is not y and dense.stride() == x.stride() and torch.equal(dense, y)


def test_a_channels_last_group_norm_survives_the_weight_pass() -> None:
    """Split before the norm for zb-h1 (its weight pass asks the norm for its weight's
    gradient alone), with and without the norm recomputed, on 4 x 4 and 1 x 1 maps: loss and
    gradients as in the model. Without the guard torch's CPU kernel kills the process (a segmentation fault),
    so the stages run in a process of their own."""
    out = subprocess.run([sys.executable, "-m", "tests.group_norm_worker"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, f"exit code {out.returncode}\n{out.stdout}\n{out.stderr[-3000:]}"
    cases = [f"{size} {frontend}{recomputed}: equal" for size in ("(4, 4)", "(1, 1)")
             for frontend in ("fx", "export") for recomputed in ("", " recomputed")]
    assert out.stdout.split("\n")[:8] == cases
