"""Random layered DAG profiles with skip edges, for planner tests and scale benchmarks."""

from __future__ import annotations

import random

from autopipe.profile.profile import NodeProfile, Profile


def synthetic_profile(blocks: int, *, seed: int = 0, skip_prob: float = 0.3, max_skip: int = 16,
                      layer_size: int = 10, param_prob: float = 0.5, tied: bool = False,
                      nontensor_prob: float = 0.0, branches: int = 1) -> Profile:
    """A profile of ``blocks`` computing nodes on a backbone chain with random skip edges.

    Node ``n{i}`` reads ``n{i-branches}`` (the previous node of its branch; with one branch
    the graph is a chain) and, with probability ``skip_prob``, one earlier node up to
    ``max_skip`` back (a residual or U-Net skip, or an edge between branches). The output
    reads every branch's last node. Times are 1–10 ms forward and about twice that
    backward; nodes are grouped into modules ``layers.{i // layer_size}``.

    Args:
        blocks: number of computing nodes.
        seed: random seed; the same arguments give the same profile.
        skip_prob: chance that a node also reads an earlier node.
        max_skip: how far back a skip edge may reach.
        layer_size: nodes per module ``layers.k``.
        param_prob: chance that a node owns a parameter.
        tied: the first and last parametrised nodes share one parameter.
        nontensor_prob: chance that a node's output is not a tensor (it cannot be sent).
        branches: number of parallel chains (more than one makes convex cuts beat chain cuts).
    """
    rng = random.Random(seed)
    nodes: list[NodeProfile] = []
    edges: list[tuple[str, str, int]] = []
    params: dict[str, int] = {}
    out_bytes: dict[str, int] = {"x": 1 << 20}
    nodes.append(NodeProfile(name="x", op="placeholder", target="x", module="", forward_s=0.0,
                             backward_input_s=0.0, backward_weight_s=0.0, activation_bytes=0,
                             output_bytes=out_bytes["x"], param_bytes=0))
    owners: list[int] = []
    for i in range(blocks):
        name = f"n{i}"
        fwd = rng.uniform(1e-3, 10e-3)
        has_param = rng.random() < param_prob
        pname = f"layers.{i // layer_size}.p{i}"
        pbytes = 4 * rng.randrange(1 << 16, 1 << 22) if has_param else 0
        if has_param:
            params[pname] = pbytes
            owners.append(i)
        is_tensor = not (0 < i < blocks - branches and rng.random() < nontensor_prob)
        out_bytes[name] = 4 * rng.randrange(1 << 14, 1 << 20) if is_tensor else 0
        nodes.append(NodeProfile(
            name=name, op="call_function", target="op", module=f"layers.{i // layer_size}",
            forward_s=fwd, backward_input_s=fwd * rng.uniform(0.8, 1.2),
            backward_weight_s=fwd * rng.uniform(0.8, 1.2) if has_param else 0.0,
            activation_bytes=4 * rng.randrange(1 << 14, 1 << 21), output_bytes=out_bytes[name],
            param_bytes=pbytes, params=(pname,) if has_param else (), is_tensor=is_tensor))
        prev = "x" if i < branches else f"n{i - branches}"
        edges.append((prev, name, out_bytes[prev]))
        if i > 1 and rng.random() < skip_prob:
            j = rng.randrange(max(0, i - max_skip), i - 1)
            if f"n{j}" != prev:
                edges.append((f"n{j}", name, out_bytes[f"n{j}"]))
    if tied and len(owners) >= 2:
        first, last = owners[0], owners[-1]
        shared = nodes[first + 1].params
        n = nodes[last + 1]
        nodes[last + 1] = NodeProfile(**{**{f: getattr(n, f) for f in n.__slots__},  # type: ignore[attr-defined]
                                         "shared_params": shared})
    nodes.append(NodeProfile(name="output", op="output", target="output", module="", forward_s=0.0,
                             backward_input_s=0.0, backward_weight_s=0.0, activation_bytes=0,
                             output_bytes=0, param_bytes=0, is_tensor=False))
    for i in range(max(0, blocks - branches), blocks):
        edges.append((f"n{i}", "output", out_bytes[f"n{i}"]))
    return Profile(device="synthetic", dtype="float32", microbatch_shape=[[1]], nodes=tuple(nodes),
                   edges=tuple(edges), graph_fingerprint=f"synthetic-{blocks}-{seed}",
                   method="synthetic", params=params)
