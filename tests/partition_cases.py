"""Random DAG profiles and pipelines for the partition tests (hypothesis strategies)."""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from autopipe.partition.coarsen import merge_forced
from autopipe.partition.problem import Config, Problem, from_profile
from autopipe.plan_format import Device
from autopipe.profile.loss import LossCost
from autopipe.profile.memory import param_memory
from autopipe.profile.profile import NodeProfile, Profile


@dataclass(frozen=True)
class Case:
    """A random profile and the pipeline to plan it for."""

    profile: Profile
    config: Config
    optimizer: str
    node_layer: dict[str, int] = dataclasses.field(default_factory=dict)
    """The layers recomputed regions may not span (``Problem.node_layer``)."""

    def problem(self) -> Problem:
        problem = merge_forced(from_profile(self.profile, self.config, optimizer=self.optimizer))
        return dataclasses.replace(problem, node_layer=self.node_layer)


def times(most: float) -> st.SearchStrategy[float]:
    """Node times: zero, or 1e-4 × ``most`` up to ``most`` seconds.

    Not smaller: the MIP solvers work to about 1e-6 of the objective, so a node a
    millionth of the step (1e-6 s against a 1.25 s step, which hypothesis found) sits
    inside their tolerance and the ILP may return a partition 1e-6 off brute force's; real
    profiles' smallest nodes (microseconds) are about 1e-5 of their steps."""
    return st.one_of(st.just(0.0), st.floats(1e-4 * most, most))


@st.composite
def profiles(draw: st.DrawFn, min_nodes: int = 3, max_nodes: int = 6, tables: bool = False,
             no_grad: bool = False) -> Profile:
    """A placeholder ``x``, ``n`` computing nodes on a random DAG, and an output node.
    ``tables``: some nodes read no input and no parameter, only other such nodes (or
    nothing): values a stage may make again ([Note: values made again]). ``no_grad``: the
    nodes' values without a gradient are marked, as the trace marks them (the input, and
    what reads no parameter and only such values), and some others (an integer result)
    ([Note: values without a gradient])."""
    n = draw(st.integers(min_nodes, max_nodes))
    names = ["x"] + [f"n{i}" for i in range(n)]
    nodes = [NodeProfile(name="x", op="placeholder", target="x", module="", forward_s=0.0,
                         backward_input_s=0.0, backward_weight_s=0.0, activation_bytes=0,
                         output_bytes=draw(st.integers(0, 4096)), param_bytes=0)]
    edges: list[tuple[str, str, int]] = []
    params: dict[str, int] = {}
    out_bytes = {"x": nodes[0].output_bytes}
    read: set[str] = set()
    made: list[str] = []
    for i in range(n):
        name = names[i + 1]
        earlier = names[: i + 1]
        if tables and i < n - 1 and draw(st.integers(0, 2)) == 0:  # a table: from other tables only
            made.append(name)
            srcs = draw(st.lists(st.sampled_from(made[:-1]), max_size=2, unique=True)) if made[:-1] else []
            out_bytes[name] = draw(st.integers(1, 4096))
            nodes.append(NodeProfile(
                name=name, op="call_function", target="f", module=f"layers.{i // 2}",
                forward_s=draw(times(0.2)), backward_input_s=0.0, backward_weight_s=0.0,
                activation_bytes=0, output_bytes=out_bytes[name], param_bytes=0, remakable=True))
            for src in srcs:
                edges.append((src, name, out_bytes[src]))
                read.add(src)
            continue
        srcs = draw(st.lists(st.sampled_from(earlier), min_size=1, max_size=3, unique=True))
        is_tensor = draw(st.booleans()) or draw(st.booleans()) or i == n - 1
        out_bytes[name] = draw(st.integers(0, 4096)) if is_tensor else 0
        own = draw(st.booleans())
        pname = f"w{i}"
        if own:
            params[pname] = 4 * draw(st.integers(1, 512))
        shared = ()
        owned = [p for p in params if p != pname]
        if owned and draw(st.integers(0, 4)) == 0:
            shared = (draw(st.sampled_from(owned)),)
        fwd = draw(times(1.0))
        nodes.append(NodeProfile(
            name=name, op="call_function", target="f", module=f"layers.{i // 2}",
            forward_s=fwd, backward_input_s=draw(times(2.0)),
            backward_weight_s=draw(times(1.0)) if own else 0.0,
            activation_bytes=draw(st.integers(0, 4096)), output_bytes=out_bytes[name],
            param_bytes=params.get(pname, 0) if own else 0, params=(pname,) if own else (),
            shared_params=shared, is_tensor=is_tensor,
            # a call's scratch (a cuDNN workspace), held while it runs: none, or some
            scratch_bytes=draw(st.one_of(st.just(0), st.integers(0, 16384)))))
        for s in srcs:
            edges.append((s, name, out_bytes[s]))
            read.add(s)
    if no_grad:
        inputs: dict[str, list[str]] = {}
        for src, dst, _ in edges:
            inputs.setdefault(dst, []).append(src)
        marked: set[str] = set()
        for k, node in enumerate(nodes):
            if (not node.params and not node.shared_params and all(a in marked for a in inputs.get(node.name, ()))) \
                    or (node.op != "placeholder" and draw(st.integers(0, 3)) == 0):
                marked.add(node.name)
                nodes[k] = dataclasses.replace(node, no_grad=True)
    sinks = [nm for nm in names[1:] if nm not in read] or [names[-1]]
    nodes.append(NodeProfile(name="output", op="output", target="output", module="", forward_s=0.0,
                             backward_input_s=0.0, backward_weight_s=0.0, activation_bytes=0,
                             output_bytes=0, param_bytes=0, is_tensor=False))
    for s in sinks:
        if draw(st.booleans()) or s == names[-1]:
            edges.append((s, "output", out_bytes[s]))
    # the loss (on the last stage): none, or one whose workspace the last stage holds
    loss = None
    if draw(st.booleans()):
        saved = draw(st.integers(0, 4096))
        loss = LossCost(forward_s=draw(times(0.5)), backward_s=draw(times(0.5)), activation_bytes=saved,
                        input_bytes=draw(st.integers(0, 4096)), peak_bytes=saved + draw(st.integers(0, 8192)))
    # the libraries' workspaces each rank holds (cuBLAS's on a GPU): none, or some
    library = draw(st.sampled_from([0, 0, 4096]))
    return Profile(device="test", dtype="float32", microbatch_shape=[[1]], nodes=tuple(nodes),
                   edges=tuple(edges), graph_fingerprint="random", method="synthetic", params=params,
                   loss=loss, library_bytes=library)


@st.composite
def cases(draw: st.DrawFn, max_nodes: int = 6, max_stages: int = 3,
          schedules: tuple[str, ...] = ("1f1b", "gpipe"), recompute: tuple[str, ...] = ("none",),
          remake: tuple[str, ...] = ("none",), no_grad: bool = False, layered: bool = False,
          views: bool = False) -> Case:
    """A random profile and a random pipeline for it (memory limits sometimes too small).

    A zb-h1 pipeline gets a micro-batch count its rounds divide (``check_schedule``).
    ``recompute``: the recomputation modes to draw from; ``remake``: the modes of values
    made again to draw from (other than ``none``: the profile has some); ``no_grad``: the
    profile marks values without a gradient, some of which go forward only; ``layered``:
    half the cases put the nodes in layers, runs of the node order that no recomputed
    region spans ([Note: a region per layer]); ``views``: some nodes that read a parameter
    hand on a view of it ([Note: a parameter's view is kept free]).
    """
    profile = draw(profiles(max_nodes=max_nodes, tables=remake != ("none",), no_grad=no_grad))
    p = draw(st.sampled_from([2, 3, 1][: max_stages] if max_stages < 3 else [2, 3, 1]))
    optimizer = draw(st.sampled_from(["adam", "sgd"]))
    total = sum(param_memory(b, optimizer=optimizer).total for b in profile.params.values())
    total += sum(n.activation_bytes for n in profile.nodes) * 6 + 3 * 4096 * len(profile.nodes)
    devices = []
    for i in range(p):
        kind = draw(st.integers(0, 3))
        memory = 0 if kind == 0 else int(total * draw(st.floats(0.05, 1.0)))
        speed = draw(st.sampled_from([1.0, 1.0, 0.5, 2.0]))
        devices.append(Device(name=f"d{i}", memory=memory, speed=speed))
    # with values without a gradient, links that cost something, so that some go forward only
    bw = draw(st.sampled_from([1e4, 1e5] if no_grad else [math.inf, 1e4, 1e5]))
    m = draw(st.integers(1, 6))
    schedule = draw(st.sampled_from(list(schedules)))
    if schedule == "zb-h1":
        rounds = max(1, m // p)
        m -= m % rounds
    # each stage's optimizer step: none, per tensor only, or per tensor and per byte
    step = draw(st.sampled_from([(0.0, 0.0), (0.5, 0.0), (0.2, 1e-4)]))
    # the runtime's per-action work, send latency and per-step work: none, or some
    some = {"forward_overhead_s": 0.05, "backward_overhead_s": 0.08, "send_latency_s": 0.03, "step_overhead_s": 0.2}
    runtime = draw(st.sampled_from([some] if no_grad else [{}, some]))
    config = Config(num_stages=p, microbatches=m, schedule=schedule, devices=tuple(devices),
                    link_bandwidth=bw, optimizer_step=step,
                    forward_overhead_s=runtime.get("forward_overhead_s", 0.0),
                    backward_overhead_s=runtime.get("backward_overhead_s", 0.0),
                    send_latency_s=runtime.get("send_latency_s", 0.0) if p > 1 else 0.0,
                    step_overhead_s=runtime.get("step_overhead_s", 0.0),
                    recompute=draw(st.sampled_from(list(recompute))), remake=draw(st.sampled_from(list(remake))))
    # the profile's rates for the plan's optimizer give the same step (float32: 4 bytes an element)
    profile = dataclasses.replace(profile, optimizer={optimizer: (step[0], step[1] * 4)}, runtime=runtime)
    if views:
        marks = draw(st.lists(st.booleans(), min_size=len(profile.nodes), max_size=len(profile.nodes)))
        profile = dataclasses.replace(profile, nodes=tuple(
            dataclasses.replace(n, param_view=True) if mark and n.params else n
            for n, mark in zip(profile.nodes, marks)))
    node_layer: dict[str, int] = {}
    if layered and draw(st.booleans()):
        starts = draw(st.lists(st.booleans(), min_size=len(profile.nodes), max_size=len(profile.nodes)))
        node_layer = {n.name: k for n, k in zip(profile.nodes, itertools.accumulate(starts))}
    return Case(profile=profile, config=config, optimizer=optimizer, node_layer=node_layer)


@st.composite
def chunked_cases(draw: st.DrawFn, max_nodes: int = 6,
                  schedules: tuple[str, ...] = ("interleaved-1f1b", "zbv"),
                  recompute: tuple[str, ...] = ("none",), remake: tuple[str, ...] = ("none",),
                  no_grad: bool = False) -> Case:
    """A random profile planned as 2 ranks × 2 chunks ([Note: chunks]) with one of
    ``schedules``, each rank's device (memory limit and speed) shared by its chunks; a
    micro-batch count the schedule's rounds divide (dualpipev: at least its 4 chunks).
    ``recompute``, ``remake``, ``no_grad``: as ``cases``."""
    case = draw(cases(max_nodes=max_nodes, max_stages=2, schedules=("1f1b",), recompute=recompute,
                      remake=remake, no_grad=no_grad))
    cfg = case.config
    ranks = cfg.devices if len(cfg.devices) == 2 else (cfg.devices[0], draw(st.sampled_from(
        [cfg.devices[0], dataclasses.replace(cfg.devices[0], name="d1", speed=0.5)])))
    schedule = draw(st.sampled_from(schedules))
    m = draw(st.sampled_from([4, 5, 6] if schedule == "dualpipev" else [1, 2, 3, 4, 6]))
    chunks = (*ranks, *ranks) if schedule == "interleaved-1f1b" else (*ranks, *ranks[::-1])
    config = dataclasses.replace(cfg, num_stages=4, virtual_stages=2, microbatches=m,
                                 schedule=schedule, devices=chunks)
    return Case(profile=case.profile, config=config, optimizer=case.optimizer)


def check_rows(model: Any, values: dict[str, float], ev: Any) -> None:
    """The MIP's rows at a warm start's values (``ilp._Model.warm``) agree with
    ``costs.evaluate``'s ``ev``: each stage's peak memory is the larger of its activation
    and optimizer-step rows (scaled by its limit), and every other row holds."""
    peaks: dict[int, float] = {}
    for name, row in model.rows.items():
        if name.startswith(("mem_", "memstep_")):
            s = int(name.split("_")[1])
            peaks[s] = max(peaks.get(s, 0.0), row.value(values))
        elif name.startswith("nonempty_"):
            assert row.value(values) >= 1 - 1e-9
        elif name.startswith("tied_count_"):  # at least k - 1 levels for k holders
            assert row.value(values) >= -1 - 1e-9
        else:  # every other row holds as ">= 0" or "<= 0" at the warm values
            assert row.value(values) >= -1e-9 if name.startswith(("cross", "hold", "tied_order", "remake", "alone", "grad_", "messages_", "zeros_")) \
                else row.value(values) <= 1e-9, name
    for s, peak in peaks.items():
        assert abs(peak - ev.stages[s].memory / ev.stages[s].limit) <= 1e-9 * max(1.0, abs(peak)), s
