"""Running a plan: per-stage modules, torch.distributed.pipelining stages and schedules, training."""

from autopipe.runtime.checkpoint import (
    CheckpointInfo,
    find_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from autopipe.runtime.consolidate import consolidate, write_state_dict
from autopipe.runtime.launch import LaunchResult, launch
from autopipe.runtime.materialize import Materialized, check_init, materialize_stages
from autopipe.runtime.optim import TrainConfig
from autopipe.runtime.pipe import Evaluation, Pipe, build
from autopipe.runtime.prepare import Prepared, prepare
from autopipe.runtime.reference import reference_train
from autopipe.runtime.split import Split, StageModule, split_graph
from autopipe.runtime.train import TrainResult, train

__all__ = [
    "CheckpointInfo",
    "Evaluation",
    "LaunchResult",
    "Materialized",
    "Pipe",
    "Prepared",
    "Split",
    "StageModule",
    "TrainConfig",
    "TrainResult",
    "build",
    "check_init",
    "consolidate",
    "find_checkpoint",
    "launch",
    "load_checkpoint",
    "materialize_stages",
    "prepare",
    "reference_train",
    "save_checkpoint",
    "split_graph",
    "train",
    "write_state_dict",
]
