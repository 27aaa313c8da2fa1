"""Tracing models into Graphs (torch.fx and torch.export front ends)."""

from autopipe.trace.frontend import trace
from autopipe.trace.graph import Graph, NodeInfo

__all__ = ["Graph", "NodeInfo", "trace"]
