"""Partitioning: cut a profiled model into pipeline stages (ILP, chain DP, baselines)."""

from autopipe.partition.costs import Evaluation, StageCost, evaluate, violations
from autopipe.partition.planner import METHODS, plan_profile
from autopipe.partition.problem import SCHEDULES, Config, Problem, from_profile
from autopipe.partition.synthetic import synthetic_profile

__all__ = [
    "METHODS",
    "SCHEDULES",
    "Config",
    "Evaluation",
    "Problem",
    "StageCost",
    "evaluate",
    "from_profile",
    "plan_profile",
    "synthetic_profile",
    "violations",
]
