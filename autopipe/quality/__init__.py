"""Partition quality: comparing plans and the golden-file regression gate."""

from autopipe.quality.compare import Comparison, compare_plans

__all__ = ["Comparison", "compare_plans"]
