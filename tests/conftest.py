"""Shared fixtures: the example specs, traced once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import autopipe
from autopipe import ModelSpec

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ["mlp", "gpt2", "llama", "resnet", "unet", "bert"]

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(1)


def example_spec(name: str, **kwargs: object) -> ModelSpec:
    """Load ``examples/<name>.py:build``."""
    return autopipe.load_spec(str(ROOT / "examples" / f"{name}.py") + ":build", **kwargs)


@pytest.fixture(scope="session")
def traced() -> dict[str, tuple[ModelSpec, autopipe.Graph]]:
    """Every example's spec and Graph, built once."""
    out = {}
    for name in EXAMPLES:
        spec = example_spec(name)
        out[name] = (spec, autopipe.trace(spec.model, spec.example_inputs, spec.example_kwargs))
    return out


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def resident_bytes_at(address: int) -> tuple[int, int]:
    """(size, resident bytes) of this process's mapping that holds ``address`` (``/proc/self/smaps``)."""
    found, size = False, 0
    with open("/proc/self/smaps", encoding="ascii") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                found, size = lo <= address < hi, hi - lo
            elif found and head == "Rss:":
                return size, int(line.split()[1]) * 1024
    raise AssertionError(f"no mapping holds {address:#x}")


def calibrated_once(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """measure_runtime_costs answers fixed costs at once; returns the optimizers it was asked for."""
    import autopipe.runtime.calibrate as calibrate
    from autopipe.schedule.runtime_costs import RuntimeCosts

    asked: list[str] = []
    costs = RuntimeCosts(forward_overhead_s=1e-4, send_latency_s=5e-5, link_bandwidth=1e9,
                         allreduce_bandwidth=4e8, optimizer="adam", optimizer_tensor_s=3e-5,
                         optimizer_element_s=7e-9)
    monkeypatch.setattr(calibrate, "measure_runtime_costs", lambda optimizer, **_: asked.append(optimizer) or costs)
    return asked
