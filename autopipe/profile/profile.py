"""Profile: per-node forward/backward time and memory of a traced model, with its JSON form."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from autopipe._jsonio import (
    array_field,
    as_array,
    as_object,
    object_field,
    read_json,
    write_json_atomic,
)
from autopipe.errors import ProfileError
from autopipe.profile.loss import LossCost
from autopipe.trace.graph import Graph

SCHEMA = "autopipe.profile/1"


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeProfile:
    """Cost of one graph node for one micro-batch."""

    name: str
    """fx node name."""
    op: str
    """fx op."""
    target: str
    """Readable target."""
    module: str
    """Owning module path; ``""`` is top level."""
    forward_s: float
    """Forward time, seconds."""
    backward_input_s: float
    """Backward time for gradients w.r.t. the node's inputs, seconds."""
    backward_weight_s: float
    """Backward time for gradients w.r.t. the node's parameters, seconds (0 without parameters)."""
    activation_bytes: int
    """Bytes the node saves for backward (parameters excluded, storages counted once)."""
    output_bytes: int
    """Bytes of the node's output: what a cut right after it sends."""
    param_bytes: int
    """Bytes of the parameters the node owns."""
    params: tuple[str, ...] = ()
    """Names of the parameters the node owns."""
    shared_params: tuple[str, ...] = ()
    """Parameters the node reads but another node owns (tied weights)."""
    is_tensor: bool = True
    """Whether the output is a single tensor (only those may cross a cut)."""
    embedding: bool = False
    """Whether the node is an embedding lookup (``aten.embedding``, or a leaf ``nn.Embedding``
    that a CPU rank fuses): its weight's gradient is zero but for the rows it reads."""
    linear: bool = False
    """Whether the node is a linear layer (``aten.linear``, or a leaf ``nn.Linear``): a CPU
    rank adds its weight's gradient into ``.grad`` in place ([Note: weight gradients
    accumulated in place] in ``autopipe.runtime.grad_accum``)."""
    scratch_bytes: int = 0
    """The most bytes one call of the node (its forward, or its backward) takes beyond what
    it keeps and hands back before it returns: a cuDNN convolution's workspace. Read from
    the CUDA caching allocator's counters when measuring there ([Note: a call's scratch] in
    ``autopipe.profile._scratch``); 0 on the CPU and in estimates."""
    remakable: bool = False
    """Whether a later stage that reads the value may make it again instead of receiving it
    (``NodeInfo.remakable``; [Note: values made again] in ``autopipe.trace.remade``).
    Profiles written before it read as sending every value; a planner that has the model
    reads it from the model (``with_marks``)."""
    no_grad: bool = False
    """Whether its value surely has no gradient (``NodeInfo.no_grad``; [Note: values without
    a gradient] in ``autopipe.trace.no_grad``): a cut may send it forward only. Profiles
    written before it read as every value having one; a planner that has the model reads it
    from the model (``with_marks``)."""
    param_view: bool = False
    """Whether its value is a view of a parameter's storage (``NodeInfo.param_view``): a
    recomputed region keeps it free ([Note: a parameter's view is kept free] in
    ``autopipe.partition.costs``). Profiles written before it read as none; a planner that
    has the model reads it from the model (``with_marks``)."""

    def is_linear(self) -> bool:
        """A linear layer (profiles written before ``linear`` existed: by an ``aten.linear``
        target; a leaf ``nn.Linear`` of those reads as not one)."""
        return self.linear or self.target == "aten.linear.default"

    def is_embedding(self) -> bool:
        """An embedding lookup (profiles written before ``embedding`` existed: by its target)."""
        return self.embedding or self.target == "aten.embedding.default"

    def __post_init__(self) -> None:
        for f in ("forward_s", "backward_input_s", "backward_weight_s"):
            v = getattr(self, f)
            if not v >= 0:  # also catches NaN
                raise ProfileError(f"node {self.name}: {f} = {v} is not a non-negative time",
                                   hint="re-profile the model")
        for f in ("activation_bytes", "output_bytes", "param_bytes", "scratch_bytes"):
            if getattr(self, f) < 0:
                raise ProfileError(f"node {self.name}: {f} is negative", hint="re-profile the model")

    @property
    def backward_s(self) -> float:
        """Total backward time (input + weight gradients)."""
        return self.backward_input_s + self.backward_weight_s


@dataclass(frozen=True, slots=True, kw_only=True)
class Profile:
    """Costs of every node of a traced model on one device, for one micro-batch."""

    device: str
    """Where the numbers come from: ``cpu``, ``cuda:NVIDIA H100 80GB HBM3``, ``estimate:h100``."""
    dtype: str
    """Compute dtype: ``float32``, ``bfloat16``."""
    microbatch_shape: list[list[int]]
    """Shapes of the flat example inputs (one micro-batch)."""
    nodes: tuple[NodeProfile, ...]
    """Per-node costs, in topological order."""
    edges: tuple[tuple[str, str, int], ...]
    """``(src, dst, bytes)`` data dependencies."""
    order: tuple[tuple[str, str], ...] = ()
    """``(a, b)``: ``a`` runs no later than ``b`` because of an in-place write, where no
    data edge says so (``Graph.order``; [Note: in-place writes order the graph])."""
    graph_fingerprint: str = ""
    """Graph.fingerprint of the traced model."""
    method: str = "measure"
    """``measure`` or ``estimate``."""
    params: dict[str, int] = field(default_factory=dict)
    """Every distinct parameter → bytes."""
    tied: tuple[tuple[str, ...], ...] = ()
    """Groups of names for one shared Parameter, canonical first."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Free-form provenance: torch version, repeats, threads, device spec."""
    optimizer: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Optimizer name → (seconds per parameter tensor, per parameter element) of its step
    on this device ([Note: the optimizer step in the plan] in ``optimizer.py``)."""
    runtime: dict[str, float] = field(default_factory=dict)
    """The pipeline runtime's fixed costs where the profile was made, in seconds (and
    bytes/s): ``forward_overhead_s`` and ``backward_overhead_s`` per action,
    ``send_latency_s`` per send, ``step_overhead_s`` per step and rank,
    ``link_bandwidth``, ``allreduce_bandwidth`` and ``allreduce_latency_s``
    (``autopipe.runtime.calibrate``); empty where not measured."""
    loss: LossCost | None = None
    """The loss function on the model's output for one micro-batch, where the profile was
    made with one ([Note: the loss is part of the last stage] in ``loss.py``)."""
    library_bytes: int = 0
    """Device memory the libraries hold in a training process beyond any tensor the nodes
    make, bytes: cuBLAS's workspaces ([Note: the libraries' workspaces] in
    ``autopipe.profile.libraries``); 0 on the CPU and in profiles made before it was counted."""

    def __post_init__(self) -> None:
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise ProfileError("profile has duplicate node names", hint="re-profile the model")
        known = set(names)
        for src, dst in (*((s, d) for s, d, _ in self.edges), *self.order):
            if src not in known or dst not in known:
                raise ProfileError(f"edge {src}→{dst} names an unknown node", hint="re-profile the model")

    def with_marks(self, graph: Graph) -> Profile:
        """This profile, each node's ``remakable``, ``no_grad`` and ``param_view`` read from
        ``graph`` (the traced model it was made for): a profile written before the fields
        existed plans as a new one does."""
        marks = {n.name: (n.remakable, n.no_grad, n.param_view) for n in graph.nodes}
        nodes = []
        for n in self.nodes:
            remakable, no_grad, param_view = marks.get(n.name, (False, False, False))
            nodes.append(replace(n, remakable=remakable, no_grad=no_grad, param_view=param_view))
        return self if tuple(nodes) == self.nodes else replace(self, nodes=tuple(nodes))

    @property
    def by_name(self) -> dict[str, NodeProfile]:
        """Node name → NodeProfile."""
        return {n.name: n for n in self.nodes}

    def param_reads(self, nodes: Iterable[str]) -> list[str]:
        """The canonical names of the parameters ``nodes`` read (owned or shared), in the order
        they read them; the output node's left out, as it owns the parameters no node reads
        (``autopipe.trace``)."""
        canon = canonical_names(self.params, self.tied)
        by = self.by_name
        seen: dict[str, None] = {}
        for n in nodes:
            if by[n].op != "output":
                for q in (*by[n].params, *by[n].shared_params):
                    seen.setdefault(canon.get(q, q))
        return list(seen)

    @property
    def forward_s(self) -> float:
        """Sum of forward times."""
        return sum(n.forward_s for n in self.nodes)

    @property
    def backward_s(self) -> float:
        """Sum of backward times."""
        return sum(n.backward_s for n in self.nodes)

    @property
    def activation_bytes(self) -> int:
        """Sum of saved-for-backward bytes."""
        return sum(n.activation_bytes for n in self.nodes)

    def to_json(self) -> dict[str, Any]:
        """The ``autopipe.profile/1`` JSON object."""
        return {
            "schema": SCHEMA,
            "device": self.device,
            "dtype": self.dtype,
            "method": self.method,
            "graph_fingerprint": self.graph_fingerprint,
            "microbatch_shape": self.microbatch_shape,
            "params": self.params,
            "tied": [list(t) for t in self.tied],
            "meta": self.meta,
            "nodes": [_node_json(n) for n in self.nodes],
            "edges": [list(e) for e in self.edges],
            **({"order": [list(e) for e in self.order]} if self.order else {}),
            **({"loss": self.loss.to_json()} if self.loss is not None else {}),
            **({"optimizer": {k: list(v) for k, v in self.optimizer.items()}} if self.optimizer else {}),
            **({"runtime": dict(self.runtime)} if self.runtime else {}),
            **({"library_bytes": self.library_bytes} if self.library_bytes else {}),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "<profile>") -> Profile:
        """Build from a JSON object; ``source`` names the file in errors."""
        try:
            nodes = tuple(_node(as_object(n, f"nodes[{i}]"), f"nodes[{i}].")
                          for i, n in enumerate(array_field(data, "nodes")))
            return cls(
                device=str(data["device"]), dtype=str(data["dtype"]),
                microbatch_shape=[list(as_array(s, f"microbatch_shape[{i}]"))
                                  for i, s in enumerate(array_field(data, "microbatch_shape"))],
                nodes=nodes,
                edges=tuple((str(s), str(d), int(b)) for s, d, b in array_field(data, "edges")),
                order=tuple((str(a), str(b)) for a, b in array_field(data, "order", ())),
                graph_fingerprint=str(data.get("graph_fingerprint", "")),
                method=str(data.get("method", "measure")),
                params={str(k): int(v) for k, v in object_field(data, "params", {}).items()},
                tied=tuple(tuple(as_array(t, f"tied[{i}]")) for i, t in enumerate(array_field(data, "tied", ()))),
                meta=dict(object_field(data, "meta", {})),
                loss=(LossCost.from_json(object_field(data, "loss"))
                      if data.get("loss") is not None else None),
                optimizer={str(k): (float(v[0]), float(v[1]))
                           for k, v in object_field(data, "optimizer", {}).items()},
                runtime={str(k): float(v) for k, v in object_field(data, "runtime", {}).items()},
                library_bytes=int(data.get("library_bytes", 0)),
            )
        except ProfileError as e:
            raise ProfileError(f"{source}: {e.message}", hint=e.hint) from None
        except (KeyError, TypeError, ValueError) as e:
            raise ProfileError(f"{source}: malformed profile ({type(e).__name__}: {e})",
                               hint="regenerate it with `autopipe profile`") from None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically as JSON."""
        write_json_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Profile:
        """Read a profile file.

        Raises:
            ProfileError: missing, corrupt or wrong-schema file (the message names it).
        """
        return cls.from_json(read_json(path, SCHEMA, ProfileError), source=str(path))


def _node_json(n: NodeProfile) -> dict[str, Any]:
    out = {**asdict(n), "params": list(n.params), "shared_params": list(n.shared_params)}
    for f in ("embedding", "linear", "scratch_bytes", "remakable", "no_grad", "param_view"):
        if not out[f]:  # the files of models without one stay as they were
            del out[f]
    return out


def node_profile(graph: Graph, name: str, *, forward_s: float, backward_input_s: float,
                 backward_weight_s: float, activation_bytes: int, scratch_bytes: int = 0) -> NodeProfile:
    """A NodeProfile whose structural fields come from ``graph``."""
    info = graph.by_name[name]
    return NodeProfile(
        name=name, op=info.op, target=info.target, module=info.module,
        forward_s=forward_s, backward_input_s=backward_input_s,
        backward_weight_s=backward_weight_s, activation_bytes=int(activation_bytes),
        output_bytes=info.output_bytes,
        param_bytes=sum(graph.param_bytes[p] for p in info.params),
        params=info.params, shared_params=info.shared_params, is_tensor=info.is_tensor,
        embedding=info.embedding, linear=info.linear, scratch_bytes=int(scratch_bytes),
        remakable=info.remakable, no_grad=info.no_grad, param_view=info.param_view,
    )


def _node(n: dict[str, Any], where: str) -> NodeProfile:
    """A node read from JSON; ``where`` (``nodes[i].``) prefixes the fields named in errors."""
    # a node's "dtype": written on 2026-12-05 only, when a cut sent a message per
    # dtype with a gradient ([Note: one message per cut]); read as nothing
    return NodeProfile(**{**{k: v for k, v in n.items() if k != "dtype"},
                          "params": tuple(array_field(n, "params", (), where=where)),
                          "shared_params": tuple(array_field(n, "shared_params", (), where=where))})


def canonical_names(params: Iterable[str], tied: Iterable[Sequence[str]]) -> dict[str, str]:
    """Every parameter name (``params``, the distinct ones, and the aliases in ``tied``'s
    groups, canonical first) → its canonical name."""
    out = {p: p for p in params}
    for group in tied:
        out.update({q: group[0] for q in group})
    return out
