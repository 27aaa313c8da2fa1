"""Per-node costs: measured on a device or estimated from FLOPs and bytes."""

from autopipe.profile.devices import DeviceSpec, builtin_device_specs, load_device_spec
from autopipe.profile.estimate import estimate
from autopipe.profile.measure import measure
from autopipe.profile.memory import ParamMemory, param_memory
from autopipe.profile.profile import NodeProfile, Profile
from autopipe.profile.whole import WholeModel, measure_whole

__all__ = [
    "DeviceSpec",
    "NodeProfile",
    "ParamMemory",
    "Profile",
    "WholeModel",
    "builtin_device_specs",
    "estimate",
    "load_device_spec",
    "measure",
    "measure_whole",
    "param_memory",
]
