"""Cut a traced GraphModule into one GraphModule per plan stage, passing skip values through."""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

from autopipe.errors import PlanError, PlanMismatchError
from autopipe.plan_format import Plan
from autopipe.runtime.kernels import mend_kernels
from autopipe.runtime.layouts import relayout, traced_order
from autopipe.runtime.norms import guard_norms
from autopipe.runtime.placement import schedule_kind
from autopipe.runtime.recompute import checkpoint_groups
from autopipe.trace.aliasing import storage_of, view_sources, written_in_place, written_storages
from autopipe.trace.graph import Graph

# [Note: pass-through of skip values]
#
# A value produced in stage a and read in stage b > a+1 must reach b. torch's
# pipelining only sends stage s's outputs to stage s+1, and it cannot run the
# backward of a tensor sent past a neighbour (pytorch issue 127964). So every
# stage between a and b takes the value as an input and returns it unchanged:
#
#     stage 0          stage 1              stage 2
#     x ─► enc ─► h ─► (h) ─► mid ─► m ─►   (h), m ─► cat ─► out
#                 └──────── h ──────────►──────┘
#
# Stage 1's output tuple holds h itself. In backward, torch.autograd.backward
# adds the gradient stage 2 sends for h to the recv buffer of h in stage 1
# (together with any gradient from stage 1's own uses of h), and stage 1 sends
# the sum back to stage 0: forward and backward both cross every boundary, so
# the pipeline engine only ever talks to neighbours.
#
# [Note: contiguous gradients]
#
# Gradients are sent as raw memory, so they must be contiguous. A full backward
# accumulates them into the receive buffer's .grad, which autograd keeps dense,
# but the zero-bubble schedules take input gradients from torch.autograd.grad,
# which may hand back a strided view (e.g. the slice of a cat's gradient). Each
# received floating-point value therefore enters its stage through
# contiguous_grad: the identity forward, a .contiguous() on the way back.
#
# [Note: received values written in place]
#
# A stage may write a value it receives in place (Mixtral's router divides its top-k
# weights with div_, Falcon adds the attention output into the MLP's with add_). The
# value that contiguous_grad hands on is a view made inside a custom Function, which
# autograd forbids to modify in place (and without it, the receive buffer is a leaf
# that requires grad: forbidden too). Such a value enters through contiguous_grad_copy,
# which clones it; and a stage that passes it on sends the written copy, as a later
# reader of the value in the whole graph would see it written.

class _ContiguousGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, copy: bool) -> torch.Tensor:
        return x.clone() if copy else x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad.contiguous(), None


def contiguous_grad(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself, whose gradient is made contiguous (see [Note: contiguous gradients])."""
    if not x.requires_grad:
        return x
    out: torch.Tensor = _ContiguousGrad.apply(x, False)  # type: ignore[no-untyped-call]
    return out


def contiguous_grad_copy(x: torch.Tensor) -> torch.Tensor:
    """A copy of ``x`` that the stage may write in place, whose gradient is made contiguous
    (see [Note: received values written in place]). A value received without a gradient
    is copied too: written with values that have one, the receive buffer itself would
    join the graph and be asked for a gradient its sender never sends."""
    if not x.requires_grad:
        return x.clone()
    out: torch.Tensor = _ContiguousGrad.apply(x, True)  # type: ignore[no-untyped-call]
    return out


@dataclass(frozen=True, slots=True)
class StageModule:
    """One stage of a split model: a GraphModule and what flows in and out of it."""

    index: int
    """Stage index in the plan."""
    module: fx.GraphModule
    """Runs the stage: positional tensor inputs in, a tuple of tensors out."""
    inputs: tuple[str, ...]
    """Names of the graph values the stage receives (stage 0: the model's tensor inputs)."""
    outputs: tuple[str, ...]
    """Names of the graph values the stage returns (last stage: the model's flat outputs)."""
    passthrough: tuple[str, ...]
    """Inputs that the stage only forwards to the next stage (skip values crossing it)."""


@dataclass(frozen=True, slots=True)
class Split:
    """A model cut into stages by a plan."""

    stages: tuple[StageModule, ...]
    output_template: tuple[Any, ...]
    """The model's flat outputs: ``None`` where the last stage returns the value (in order),
    else the constant that the traced graph returns at that position."""

    def rebuild_outputs(self, last_stage_out: Sequence[Any]) -> list[Any]:
        """The model's flat outputs from what the last stage returned (constants re-inserted)."""
        produced = iter(last_stage_out)
        return [next(produced) if t is None else t for t in self.output_template]


def split_graph(graph: Graph, plan: Plan, constants: Mapping[str, Any] | None = None) -> Split:
    """Cut ``graph.gm`` into the plan's stages.

    Every model input enters at stage 0 (the schedule feeds only the first stage).
    ``get_attr`` nodes are copied into each stage that reads them, so parameters read in
    several stages (tied weights) appear in each of those stages' modules.

    Args:
        graph: the traced model.
        plan: a plan for that graph (``plan.stages[i].nodes`` are fx node names).
        constants: values for the model inputs that are not tensors (``None`` defaults,
            flags); they are baked into the stages instead of being sent.

    Raises:
        PlanMismatchError: the plan names nodes the graph does not have, or misses some.
        PlanError: a stage reads a value from a later stage, runs a node before an in-place
            write in a later stage that it must follow ([Note: in-place writes order the
            graph]), a non-tensor value crosses a cut, or the graph's output is not in the
            last stage.
    """
    constants = dict(constants or {})
    stage_of = _stage_of(graph, plan)
    infos = graph.by_name
    fx_nodes = [n for n in graph.gm.graph.nodes if n.op != "get_attr"]
    graph_nodes = {n.name: n for n in fx_nodes}
    order = {n.name: i for i, n in enumerate(fx_nodes)}
    num = plan.num_stages
    last = num - 1
    out_node = next(n for n in fx_nodes if n.op == "output")
    if stage_of[out_node.name] != last:
        raise PlanError(f"the model's output node is in stage {stage_of[out_node.name]}, not in the "
                        f"last stage {last}", hint="regenerate the plan")

    remade_by, never_sent = _remade_by(graph, plan)
    # where each value is made (inputs enter at stage 0) and the last stage that reads it
    made = {n.name: 0 if n.op == "placeholder" else stage_of[n.name] for n in fx_nodes}
    needed_until: dict[str, int] = {}
    for n in fx_nodes:
        for a in n.all_input_nodes:
            if a.op == "get_attr":
                continue
            if made[a.name] > stage_of[n.name]:
                raise PlanError(
                    f"node {n.name!r} in stage {stage_of[n.name]} reads {a.name!r} from the later "
                    f"stage {made[a.name]}", hint="stages must follow the data flow; regenerate the plan")
            if a.name in remade_by[stage_of[n.name]]:
                continue  # made again there ([Note: values made again])
            if a.name in never_sent and made[a.name] != stage_of[n.name]:
                raise PlanError(
                    f"stage {stage_of[n.name]} reads {a.name!r} from stage {made[a.name]}, but "
                    f"the plan neither sends it nor makes it again there", hint=_REPLAN)
            needed_until[a.name] = max(needed_until.get(a.name, 0), stage_of[n.name])
    for first, then in graph.order:  # [Note: in-place writes order the graph]
        if stage_of[first] > stage_of[then]:
            raise PlanError(
                f"node {then!r} in stage {stage_of[then]} must run after {first!r} in the later "
                f"stage {stage_of[first]}: one of them writes in place a tensor the other reads",
                hint="plan it again with this autopipe (plans and profiles made before it did "
                     "not keep this order); a profile given with --profile must be made again too")

    placeholders = [n for n in fx_nodes if n.op == "placeholder"]
    tensor_inputs = [n.name for n in placeholders if n.name not in constants]
    for name in tensor_inputs:
        if not infos[name].is_tensor:
            raise PlanError(f"model input {name!r} is not a tensor and has no constant value",
                            hint="pass it in constants=, or make it a tensor")

    # live[b]: values that cross the cut after stage b, in graph order
    live: list[list[str]] = []
    for b in range(last):
        crossing = [v for v in needed_until if made[v] <= b < needed_until[v] and v not in constants]
        crossing.sort(key=order.__getitem__)
        for v in crossing:
            if not infos[v].is_tensor:
                raise PlanError(
                    f"value {v!r} ({infos[v].target}) is not a single tensor but crosses the cut "
                    f"between stages {b} and {b + 1}",
                    hint=f"keep {v!r} in one stage with all its users; only tensors can be sent")
        if not crossing:
            raise PlanError(f"stage {b + 1} receives nothing from stage {b}",
                            hint="every stage must depend on the one before it; regenerate the plan")
        live.append(crossing)

    derived = _derived_views(graph, stage_of, fx_nodes, live)

    flat_out = list(out_node.args[0]) if isinstance(out_node.args[0], (tuple, list)) else [out_node.args[0]]
    template = tuple(None if isinstance(v, fx.Node) else v for v in flat_out)
    for v in flat_out:
        if isinstance(v, fx.Node) and v.op != "placeholder" and not infos[v.name].is_tensor:
            raise PlanError(f"model output {v.name!r} is not a tensor",
                            hint="pipeline training needs a model whose outputs are tensors")

    copy = schedule_kind(plan.schedule).splits_backward
    unread = _unread_state(graph)
    tensors = {n.name for n in graph.nodes if n.is_tensor}
    stages = []
    for s in range(num):
        ins = tensor_inputs if s == 0 else live[s - 1]
        outs = [v.name for v in flat_out if isinstance(v, fx.Node)] if s == last else live[s]
        body = [n for n in fx_nodes if stage_of[n.name] == s and n.op not in ("placeholder", "output")]
        floats = {v for v in ins if s > 0 and _is_float(infos[v].dtype)}
        again = sorted((graph_nodes[v] for v in remade_by[s]), key=lambda n: order[n.name])
        gm = _stage_graph_module(graph.gm, s, ins, body, outs, constants if s == 0 else {},
                                 sends=s != last, copy=copy, grad_inputs=floats,
                                 recompute=plan.stages[s].recompute,
                                 derived=[*again, *(derived[s - 1] if s > 0 else ())],
                                 unread=unread if s == last else (), tensors=tensors)
        made_here = {n.name for n in body}
        passthrough = tuple(v for v in outs if v in ins and v not in made_here)
        stages.append(StageModule(index=s, module=gm, inputs=tuple(ins), outputs=tuple(outs),
                                  passthrough=passthrough))
    return Split(stages=tuple(stages), output_template=template)


_REPLAN = "plan it again for this model with `autopipe plan`"


def check_remade(plan: Plan) -> None:
    """Each stage makes again only nodes of earlier stages ([Note: values made again] in
    ``autopipe.trace.remade``; which of them may be made again, the model says: ``split_graph``).

    Raises:
        PlanError: a stage makes again a node no stage makes, or one of its own or a later stage.
    """
    stage_of = plan.stage_of
    for s in plan.stages:
        for name in s.remade:
            made = stage_of.get(name)
            if made is None:
                raise PlanError(f"stage {s.index} makes {name!r} again, which no stage makes "
                                f"(the model does not have it)", hint=_REPLAN)
            if made >= s.index:
                raise PlanError(f"stage {s.index} makes {name!r} again, which stage {made} makes",
                                hint=f"a stage makes again only values of earlier stages; {_REPLAN}")


def _remade_by(graph: Graph, plan: Plan) -> tuple[list[set[str]], set[str]]:
    """Per stage, the nodes of earlier stages it runs again (``Stage.remade``; [Note: values
    made again] in ``autopipe.trace.remade``), and all of them: values never sent.

    Raises:
        PlanError: a listed node is not in an earlier stage (``check_remade``), may not be
            made again, or reads a node that is not listed too.
    """
    check_remade(plan)
    infos = graph.by_name
    remade_by = [set(stage.remade) for stage in plan.stages]
    for s, names in enumerate(remade_by):
        for v in sorted(names):
            if not infos[v].remakable:
                raise PlanError(f"stage {s} makes {v!r} again, which depends on an input, a "
                                f"parameter or a random draw, or is written in place", hint=_REPLAN)
            missing = [a for a in infos[v].inputs if a not in names]
            if missing:
                raise PlanError(f"stage {s} makes {v!r} again but not {missing[0]!r}, which it reads",
                                hint=_REPLAN)
    return remade_by, set().union(*remade_by)


# [Note: unread parameters]
#
# A model may hold parameters its forward never reads on the example (XLNet's segment
# embeddings and ``mask_emb``, read only with ``token_type_ids`` or ``target_mapping``), and
# persistent buffers it never reads. The trace gives such parameters to the output node
# (they count in its totals); the last stage holds them and those buffers, so that every
# tensor of the unsplit model's ``state_dict()`` is in some stage: a checkpoint then has
# every key (``consolidate`` refuses one without), and ``Pipe.load_state_dict`` finds each.
# The parameters get no gradient, so the optimizer leaves them as one process would.


def _unread_state(graph: Graph) -> list[str]:
    """Parameters no node reads, then persistent buffers no node reads ([Note: unread parameters])."""
    params = {name for name, _ in graph.gm.named_parameters(remove_duplicate=False)}
    read = {b for info in graph.nodes for b in info.buffers}
    buffers = [k for k in graph.gm.state_dict(keep_vars=True) if k not in params and k not in read]
    return [*graph.nodes[-1].params, *buffers]


# [Note: aliases received together]
#
# Values that cross a cut arrive as tensors of their own, so two that share a storage on
# the sending side (DeepSeek-V3's key buffer from new_empty and the slice of it that a
# copy_ fills) no longer share it on the receiving side: a write through one is not seen
# through the other. Where a later stage writes such a storage in place and one crossing
# value views another through nothing but view operations, only the viewed one is sent,
# and the receiving stage makes the view again from it (the view nodes run in both
# stages; they cost nothing). Its gradient then reaches the sent value through the view.


def _derived_views(graph: Graph, stage_of: Mapping[str, int], fx_nodes: Sequence[fx.Node],
                   live: list[list[str]]) -> list[list[fx.Node]]:
    """Per cut b, the view nodes stage b + 1 makes again instead of receiving their values,
    in graph order; drops those values from ``live[b]`` ([Note: aliases received together])."""
    views = view_sources(graph.gm, {n.name for n in graph.nodes if n.is_tensor})
    written: dict[int, set[str]] = {}
    for n in fx_nodes:
        if n.op not in ("placeholder", "output"):
            written.setdefault(stage_of[n.name], set()).update(written_storages(graph.gm, [n], views))
    nodes = {n.name: n for n in fx_nodes}
    order = {n.name: i for i, n in enumerate(fx_nodes)}
    out: list[list[fx.Node]] = []
    for b, crossing in enumerate(live):
        later = set().union(*(w for s, w in written.items() if s > b))
        sent = set(crossing)
        chains: dict[str, list[fx.Node]] = {}
        for v in crossing:
            if storage_of(v, views) not in later:
                continue
            chain, x = [nodes[v]], views.get(v)
            while x is not None and x.name not in sent:
                chain.append(x)
                x = views.get(x.name)
            viewed_only = all(len(c.all_input_nodes) == 1 for c in chain)
            if x is not None and viewed_only:
                chains[v] = chain
        live[b] = [v for v in crossing if v not in chains]
        out.append(sorted({c for chain in chains.values() for c in chain}, key=lambda c: order[c.name]))
    return out


def _is_float(dtype: str | None) -> bool:
    return dtype is not None and getattr(torch, dtype, None) in (
        torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _stage_of(graph: Graph, plan: Plan) -> dict[str, int]:
    """Node name → stage, checked to cover exactly the graph's nodes."""
    stage_of = plan.stage_of
    names = {n.name for n in graph.nodes}
    missing = [n.name for n in graph.nodes if n.name not in stage_of]
    extra = sorted(set(stage_of) - names)
    if missing or extra:
        what = []
        if missing:
            what.append(f"{len(missing)} model nodes are in no stage (e.g. {missing[0]!r})")
        if extra:
            what.append(f"{len(extra)} plan nodes are not in the model (e.g. {extra[0]!r})")
        raise PlanMismatchError("the plan does not match the model: " + "; ".join(what),
                                hint="make the plan for this model with `autopipe plan`")
    return stage_of


def _stage_graph_module(
    root: fx.GraphModule,
    index: int,
    inputs: Sequence[str],
    body: Sequence[fx.Node],
    outputs: Sequence[str],
    constants: Mapping[str, Any],
    *,
    sends: bool,
    copy: bool,
    grad_inputs: set[str],
    recompute: Sequence[Sequence[str]] = (),
    derived: Sequence[fx.Node] = (),
    unread: Sequence[str] = (),
    tensors: Set[str] | None = None,
) -> fx.GraphModule:
    """A GraphModule that takes ``inputs``, runs ``body`` and returns ``outputs`` as a tuple.

    ``sends``: the outputs go to another stage (made sendable; pass-through inputs are
    returned as received unless ``copy``); ``copy``: every sent output is a fresh tensor.
    ``recompute``: groups of node names that run under checkpointing ([Note: recomputed
    regions] in ``autopipe.runtime.recompute``). ``derived``: nodes run before ``body``: those
    of earlier stages the stage makes again ([Note: values made again] in
    ``autopipe.trace.remade``), then view nodes made again from the inputs ([Note: aliases
    received together]). ``unread``: parameters and persistent buffers no node reads, held by
    the last stage ([Note: unread parameters]).
    ``tensors``: the names of the nodes whose value is one tensor (for ``recompute``).
    """
    g = fx.Graph()
    env: dict[str, Any] = dict(constants)
    received: dict[str, fx.Node] = {}
    for name in inputs:
        received[name] = env[name] = g.placeholder(name)
    written = written_in_place(root, [*derived, *body], inputs) if index > 0 else set()
    for name in inputs:
        if name in grad_inputs:
            enter = contiguous_grad_copy if name in written else contiguous_grad
            env[name] = g.call_function(enter, (env[name],))
    if index > 0:  # [Note: received layouts]
        traced = {n.name: n.meta.get("val") for n in root.graph.nodes if n.name in received}
        for name in inputs:
            order = traced_order(traced.get(name))
            if order is not None:
                env[name] = g.call_function(relayout, (env[name], order))

    def value(n: fx.Node) -> Any:
        if n.op == "get_attr" and n.name not in env:
            env[n.name] = g.get_attr(str(n.target))
        return env[n.name]

    for n in (*derived, *body):
        env[n.name] = g.node_copy(n, value)
    results: list[Any] = []
    for name in outputs:
        if not sends:
            v = env[name]
            # the zero-bubble schedules' last stage: torch detaches the model's outputs in
            # place after I, so one that the stage's ops also read gets a copy (see sendable)
            read = copy and isinstance(v, fx.Node) and bool(v.users)
            results.append(g.call_function(sendable, (v, True)) if read else v)
        elif name in received and index > 0 and not copy and name not in written:
            results.append(received[name])  # a receive buffer: dense already
        else:
            results.append(g.call_function(sendable, (env[name], copy)))
    for target in unread:
        if target not in env:
            g.get_attr(target)  # no users: it only makes GraphModule copy the parameter
    g.output(tuple(results))
    gm = fx.GraphModule(root, g, class_name=f"Stage{index}")
    gm.graph.lint()
    # [Note: batch norm gradients laid out like its output], [Note: group norm in a weight pass]
    guards = guard_norms(gm, split_backward=copy)
    mend_kernels(gm)  # [Note: the meta branch's histc]
    if recompute:
        groups = []
        for group in recompute:
            nodes = [env[name] for name in group if isinstance(env.get(name), fx.Node)]
            groups.append([*nodes, *(guards[n] for n in nodes if n in guards)])
        checkpoint_groups(gm, groups, stage=index, tensors=tensors)
    return gm


def sendable(x: torch.Tensor, copy: bool) -> torch.Tensor:
    """``x`` as a stage output: contiguous (sends copy raw memory), and a fresh tensor if ``copy``.

    The zero-bubble schedules detach every stage output in place once the input
    gradients are computed, while the weight-gradient pass may still need the same
    tensor object (saved by an op of the stage that also read it, or the base of a
    view); an output of its own keeps that tensor intact. The other schedules need
    no copy. On the last stage torch detaches the model's outputs so
    (``backward_one_chunk``), and only those the stage's ops read too get a copy:
    GroupViT's, CLIP's and SigLIP's text and image embeddings, which their
    similarity's matmul saves for the weight pass of the other tower.
    """
    if copy:
        return x.clone(memory_format=torch.contiguous_format)
    return x.contiguous()


def retarget_devices(gm: fx.GraphModule, device: torch.device) -> None:
    """Point device arguments baked into ``gm`` by tracing (``arange(..., device='cpu')``) at ``device``."""
    changed = False

    def swap(v: Any) -> Any:
        nonlocal changed
        if isinstance(v, torch.device) and v != device:
            changed = True
            return device
        if isinstance(v, (list, tuple)):
            return type(v)(swap(x) for x in v)
        return v

    # the bodies of higher-order ops (wrap_with_set_grad_enabled) are sub-GraphModules
    for sub in gm.modules():
        if not isinstance(sub, fx.GraphModule):
            continue
        changed = False
        for n in sub.graph.nodes:
            n.args = tuple(swap(a) for a in n.args)
            n.kwargs = {k: swap(v) for k, v in n.kwargs.items()}
        if changed:
            sub.recompile()
