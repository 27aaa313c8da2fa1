"""GPU test for autopipe/runtime: 2-stage training on CUDA (NCCL ranks, or one rank on one GPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import autopipe
from autopipe.runtime import TrainConfig, reference_train

pytestmark = [pytest.mark.gpu, pytest.mark.distributed]


def test_two_stages_on_cuda_equal_the_cpu(tmp_path: Path) -> None:
    from benchmarks.runtime_cuda import KNOBS, ROOT, SPEC, run

    code, losses, text = run(3, "cuda", tmp_path)
    assert code == 0, text[-3000:]
    assert "CUDA memory, plan predicted" in text  # the summary's peak memory per rank
    spec = autopipe.load_spec(str(ROOT / SPEC), **KNOBS)
    graph = autopipe.trace(spec.model, spec.example_inputs)
    ref = reference_train(spec, graph, 4, TrainConfig(steps=3, lr=0.05, optimizer="sgd-momentum"))
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref), rtol=1e-4, atol=1e-4)
