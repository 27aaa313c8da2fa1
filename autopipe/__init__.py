"""autopipe: automatic, provably optimal pipeline-parallel partitioning for PyTorch."""

from autopipe._version import __version__
from autopipe.api import plan
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
