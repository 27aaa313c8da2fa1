"""autopipe: automatic, provably optimal pipeline-parallel partitioning for PyTorch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from autopipe._version import __version__
from autopipe.errors import (
    AutopipeError,
    InfeasiblePlanError,
    PlanMismatchError,
    ProfileError,
    SpecError,
    TraceError,
)
from autopipe.plan_format import Plan
from autopipe.spec import ModelSpec, load_spec
from autopipe.trace import Graph, trace

__all__ = [
    "AutopipeError",
    "Graph",
    "InfeasiblePlanError",
    "ModelSpec",
    "Plan",
    "PlanMismatchError",
    "ProfileError",
    "SpecError",
    "TraceError",
    "__version__",
    "load_spec",
    "plan",
    "trace",
]

if TYPE_CHECKING:
    from autopipe.api import plan


def __getattr__(name: str) -> Any:
    # ``plan`` is imported on first use: the planner (PuLP, HiGHS, the profilers) is ~10 MiB
    # of host memory that a training rank, which imports autopipe too, never needs
    if name == "plan":
        from autopipe.api import plan

        return plan
    raise AttributeError(f"module 'autopipe' has no attribute {name!r}")
