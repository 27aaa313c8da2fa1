"""Running a plan: per-stage modules, torch.distributed.pipelining stages and schedules, training."""

from autopipe.runtime.launch import LaunchResult, launch
from autopipe.runtime.materialize import Materialized, check_init, materialize_stages
from autopipe.runtime.optim import TrainConfig
from autopipe.runtime.reference import reference_train
from autopipe.runtime.split import Split, StageModule, split_graph
from autopipe.runtime.train import TrainResult, prepare, train

__all__ = [
    "LaunchResult",
    "Materialized",
    "Split",
    "StageModule",
    "TrainConfig",
    "TrainResult",
    "check_init",
    "launch",
    "materialize_stages",
    "prepare",
    "reference_train",
    "split_graph",
    "train",
]
