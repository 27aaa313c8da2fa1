"""Turning per-node costs into a Profile, with sizes in the profiled dtype."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
import torch.fx as fx

from autopipe.profile._walk import NodeCost
from autopipe.profile.profile import NodeProfile, Profile, node_profile
from autopipe.trace.graph import Graph


def assemble(
    graph: Graph,
    gm: fx.GraphModule,
    costs: dict[str, NodeCost],
    output_bytes: dict[str, int],
    *,
    device: str,
    dtype: torch.dtype,
    method: str,
    flat_inputs: list[Any],
    meta: dict[str, Any],
) -> Profile:
    """A Profile of ``graph`` from costs measured or estimated on ``gm`` (a cast copy or itself)."""
    params = {name: int(gm.get_parameter(name).numel() * gm.get_parameter(name).element_size())
              for name in graph.param_bytes}
    nodes: list[NodeProfile] = []
    for info in graph.nodes:
        c = costs.get(info.name, NodeCost())
        p = node_profile(graph, info.name, forward_s=c.forward_s, backward_input_s=c.backward_input_s,
                         backward_weight_s=c.backward_weight_s, activation_bytes=c.activation_bytes,
                         scratch_bytes=c.scratch_bytes)
        nodes.append(replace(p, output_bytes=output_bytes.get(info.name, info.output_bytes),
                              param_bytes=sum(params[q] for q in info.params)))
    out = {n.name: n.output_bytes for n in nodes}
    shapes = [list(x.shape) if isinstance(x, torch.Tensor) else [] for x in flat_inputs]
    return Profile(
        device=device, dtype=str(dtype).removeprefix("torch."), microbatch_shape=shapes,
        nodes=tuple(nodes), edges=tuple((s, d, out[s]) for s, d in graph.edges()),
        order=tuple(graph.order),
        graph_fingerprint=graph.fingerprint, method=method, params=params,
        tied=tuple(graph.tied), meta=meta)

