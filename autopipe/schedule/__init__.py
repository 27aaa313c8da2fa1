"""Pipeline schedules: action orders, a time-accurate simulator, and pictures of a plan."""

from autopipe.schedule.actions import (
    SCHEDULES,
    Action,
    ScheduleOrder,
    check_runnable,
    schedule_order,
)
from autopipe.schedule.simulate import (
    Event,
    SimResult,
    StageCost,
    Transfer,
    simulate,
    simulate_plan,
)

__all__ = [
    "SCHEDULES",
    "Action",
    "Event",
    "ScheduleOrder",
    "SimResult",
    "StageCost",
    "Transfer",
    "check_runnable",
    "schedule_order",
    "simulate",
    "simulate_plan",
]
