"""Per-node costs: measured on a device or estimated from FLOPs and bytes."""

from autopipe.profile.profile import NodeProfile, Profile

__all__ = ["NodeProfile", "Profile"]
