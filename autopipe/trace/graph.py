"""Graph: a traced model as a networkx DAG of fx nodes with sizes, modules and parameters."""

from __future__ import annotations

import functools
import hashlib
import inspect
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx
import torch.utils._pytree as pytree

from autopipe.trace.aliasing import in_place_order

if TYPE_CHECKING:
    import networkx as nx


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeInfo:
    """What the planner needs to know about one fx node."""

    name: str
    """The fx node name (unique in the graph)."""
    op: str
    """fx op: placeholder, call_function, call_method, call_module or output."""
    target: str
    """Readable target: ``aten.linear.default``, ``torch.relu``, a module path, a method name."""
    module: str
    """Path of the innermost module the node runs in; ``""`` means top level."""
    shape: tuple[int, ...] | None
    """Output shape when the output is one tensor, else None."""
    dtype: str | None
    """Output dtype (``"float32"``) when the output is one tensor, else None."""
    output_bytes: int
    """Bytes of every tensor in the output (what a cut after this node sends)."""
    is_tensor: bool
    """True when the output is exactly one tensor; only such values may cross a stage cut."""
    params: tuple[str, ...]
    """Parameters this node owns (canonical names); each parameter is owned by exactly one node."""
    shared_params: tuple[str, ...]
    """Parameters this node reads that another node owns (tied or reused weights)."""
    buffers: tuple[str, ...]
    """Buffers and constant tensors this node reads."""
    inputs: tuple[str, ...]
    """Names of the graph nodes whose outputs this node consumes, in argument order."""
    embedding: bool = False
    """An embedding lookup: ``aten.embedding``, or a leaf ``nn.Embedding`` that neither
    renormalises its rows nor scales or sparsifies its gradient."""
    linear: bool = False
    """A linear layer: ``aten.linear``, or a leaf ``nn.Linear`` (that class exactly)."""
    remakable: bool = False
    """Depends on no model input, parameter or random draw, and nothing writes it in place
    (a causal mask, rotary tables): a later stage that reads it may make it again instead of
    receiving it ([Note: values made again] in ``autopipe.trace.remade``)."""
    no_grad: bool = False
    """Its value surely has no gradient: not a floating-point tensor, or it reads no
    parameter, directly or through the nodes it reads (a mask, position ids) ([Note: values
    without a gradient] in ``autopipe.trace.no_grad``)."""
    param_view: bool = False
    """Its value is a view of a parameter's storage (a transposed weight: Qwen2-MoE's experts
    hand ``gate_up_proj.transpose(1, 2)`` to ``_grouped_mm``): a recomputed region that
    keeps it for its backward holds nothing the parameter does not ([Note: a parameter's
    view is kept free] in ``autopipe.partition.costs``)."""

    @property
    def top_level(self) -> bool:
        """True when the node belongs to no submodule (inputs, outputs, glue code)."""
        return self.module == ""


class Graph:
    """A traced model.

    Attributes:
        gm: the GraphModule, with flat inputs (``flat_inputs``) and a flat tuple output.
        dag: networkx DiGraph over node names; node attribute ``info`` (NodeInfo), edge
            attribute ``bytes`` (size of the value carried on that edge); made when first
            read, so that what never reads it (a training rank, the profiler) does not
            import networkx for it (12 MiB resident; a ``torch.export`` trace imports it
            anyway, through functorch).
        nodes: NodeInfo of every node except ``get_attr`` (folded into their readers),
            in the fx (topological) order.
        param_bytes: canonical parameter name → bytes.
        param_owner: canonical parameter name → name of the node that owns it.
        tied: groups of names that refer to one Parameter, canonical name first.
        frontend: ``"fx"`` (symbolic_trace) or ``"export"`` (torch.export).
        fingerprint: hex digest of op structure and shapes, stable across builds.
    """

    def __init__(
        self,
        *,
        gm: fx.GraphModule,
        nodes: Sequence[NodeInfo],
        param_bytes: dict[str, int],
        tied: Sequence[tuple[str, ...]],
        frontend: str,
        input_names: Sequence[str],
        in_spec: pytree.TreeSpec | None,
        out_spec: pytree.TreeSpec,
        signature: inspect.Signature | None = None,
    ) -> None:
        self.gm = gm
        self.nodes = list(nodes)
        self.param_bytes = dict(param_bytes)
        self.tied = [tuple(t) for t in tied]
        self.frontend = frontend
        self.input_names = list(input_names)
        self.in_spec = in_spec
        self.out_spec = out_spec
        self.signature = signature
        self.by_name = {n.name: n for n in self.nodes}
        self.param_owner = {p: n.name for n in self.nodes for p in n.params}
        tensors = {n.name for n in self.nodes if n.is_tensor}
        self.order = [(a, b) for a, b in in_place_order(gm, tensors)
                      if a in self.by_name and b in self.by_name]
        """Pairs ``(a, b)``: ``a`` runs no later than ``b`` because of an in-place write,
        beyond the data edges ([Note: in-place writes order the graph])."""
        self.fingerprint = _fingerprint(self)

    def __len__(self) -> int:
        return len(self.nodes)

    def edges(self) -> Iterator[tuple[str, str]]:
        """Every data edge ``(src, dst)`` once, in the order ``dag.edges`` lists them: by
        ``src`` in node order, each one's readers in node order."""
        readers: dict[str, dict[str, None]] = {n.name: {} for n in self.nodes}
        for n in self.nodes:
            for src in n.inputs:
                readers[src][n.name] = None
        for src, dsts in readers.items():
            for dst in dsts:
                yield src, dst

    @functools.cached_property
    def dag(self) -> nx.DiGraph:
        """The graph as a networkx DiGraph (see the class's attributes)."""
        import networkx as nx

        dag = nx.DiGraph()
        for n in self.nodes:
            dag.add_node(n.name, info=n)
        for src, dst in self.edges():
            dag.add_edge(src, dst, bytes=self.by_name[src].output_bytes)
        return dag

    def __repr__(self) -> str:
        return (f"Graph({len(self.nodes)} nodes, {len(self.param_bytes)} parameters, "
                f"frontend={self.frontend!r}, fingerprint={self.fingerprint[:12]})")

    def flat_inputs(self, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> list[Any]:
        """Arrange a micro-batch's ``(args, kwargs)`` as the GraphModule's flat inputs."""
        kwargs = kwargs or {}
        if self.in_spec is not None:
            leaves, spec = pytree.tree_flatten((args, kwargs))
            if spec != self.in_spec:
                from autopipe.errors import ExampleInputError

                raise ExampleInputError(
                    "inputs have another structure than the example the model was traced with",
                    hint="pass the same arguments (and keyword arguments) as the example micro-batch",
                )
            return list(leaves)
        assert self.signature is not None, "fx graphs carry the forward signature"
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as e:
            from autopipe.errors import ExampleInputError

            raise ExampleInputError(f"inputs do not match forward{self.signature}: {e}",
                                    hint="pass the arguments the model's forward takes") from None
        bound.apply_defaults()
        return [bound.arguments[name] for name in self.input_names]

    def unflatten_output(self, flat: Sequence[Any]) -> Any:
        """Rebuild the model's own output structure from the GraphModule's flat outputs."""
        return pytree.tree_unflatten(list(flat), self.out_spec)

    @property
    def total_param_bytes(self) -> int:
        """Bytes of all distinct parameters."""
        return sum(self.param_bytes.values())


def target_name(node: fx.Node) -> str:
    """A readable, build-independent name for a node's target."""
    t = node.target
    if isinstance(t, str):
        return t
    if isinstance(t, torch._ops.OpOverload | torch._ops.OpOverloadPacket):
        return str(t)
    mod = getattr(t, "__module__", None) or ""
    name = getattr(t, "__qualname__", None) or getattr(t, "__name__", None) or repr(t)
    if mod in ("builtins", "_operator", "operator"):
        return f"operator.{name}" if mod != "builtins" else name
    if mod.startswith("torch"):
        mod = "torch"
    return f"{mod}.{name}" if mod else name


# [Note: runtime checks on meta tensors]
#
# torch.export keeps a model's data-dependent checks as nodes: LLaVA checks that its image
# tokens match the image features with ``_is_all_true`` → ``item`` → ``sym_ite`` →
# ``_assert_scalar``; symbolic_trace keeps a ``torch._assert``. They read values, which
# meta and fake tensors do not have, and feed nothing but the assertions. An estimate and
# the runtime's fake-tensor pass (``autopipe.runtime.meta``) skip them (they cost nothing
# worth pricing, and shape nothing); training runs them for real.

_ASSERTIONS = frozenset({"aten._assert_scalar.default", "aten._assert_async.default",
                         "aten._assert_async.msg", "aten.sym_constrain_range.default",
                         "aten.sym_constrain_range_for_size.default", "torch._assert"})


def checks_only(gm: fx.GraphModule) -> set[str]:
    """Names of the nodes of ``gm`` that only serve runtime assertions: each an assertion,
    or a computing node whose every user is one of these ([Note: runtime checks on meta
    tensors])."""
    found: set[str] = set()
    for n in reversed(gm.graph.nodes):
        if n.op not in ("call_function", "call_method"):
            continue
        if target_name(n) in _ASSERTIONS or (n.users and all(u.name in found for u in n.users)):
            found.add(n.name)
    return found


def _fingerprint(graph: Graph) -> str:
    """Hash op structure, shapes and parameter shapes; independent of node and module names."""
    index = {n.name: i for i, n in enumerate(graph.nodes)}
    modules = dict(graph.gm.named_modules())
    h = hashlib.sha256()
    for n in graph.nodes:
        target = n.target
        if n.op == "call_module":
            target = type(modules[n.target]).__qualname__ if n.target in modules else n.target
        elif n.op == "placeholder":
            target = ""
        params = [(tuple(graph.gm.get_parameter(p).shape)) for p in n.params + n.shared_params]
        line = f"{n.op}|{target}|{n.shape}|{n.dtype}|{[index[i] for i in n.inputs]}|{params}|{n.is_tensor}\n"
        h.update(line.encode())
    return h.hexdigest()


def param_readers(nodes: Iterable[Any]) -> dict[str, int]:
    """Parameter → how many of ``nodes`` read it (owned or shared; ``NodeInfo``,
    ``NodeProfile``)."""
    readers: dict[str, int] = {}
    for n in nodes:
        for p in {*n.params, *n.shared_params}:
            readers[p] = readers.get(p, 0) + 1
    return readers


def tied_embeddings(nodes: Iterable[Any], is_embedding: Callable[[Any], bool]) -> frozenset[str]:
    """Parameters read by exactly two of ``nodes``, one of them an embedding (``is_embedding``)
    that reads nothing else: split over two stages, a CPU pair sums their gradients with the
    embedding's side sending only the rows its step wrote ([Note: a tied embedding's rows] in
    ``autopipe.runtime.sum_over``). ``nodes`` carry ``params`` and ``shared_params``
    (``NodeInfo``, ``NodeProfile``)."""
    nodes = list(nodes)
    readers = param_readers(nodes)
    out = set()
    for n in nodes:
        reads = {*n.params, *n.shared_params}
        if len(reads) == 1 and is_embedding(n):
            (p,) = reads
            if readers[p] == 2:
                out.add(p)
    return frozenset(out)

