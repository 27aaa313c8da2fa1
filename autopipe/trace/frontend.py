"""``trace(model, inputs)``: torch.fx.symbolic_trace first, torch.export as fallback → Graph."""

from __future__ import annotations

import contextlib
import inspect
import os
import traceback
import warnings
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch import nn

from autopipe._gc import collections_paused
from autopipe._phases import phase
from autopipe.errors import ExampleInputError, TraceError
from autopipe.trace._constants import constants_recorded, remember_constants
from autopipe.trace._distributions import distribution_checks_off
from autopipe.trace._layerdrop import layerdrop_hint
from autopipe.trace._module_to import own_dtype_conversions_kept
from autopipe.trace._quick import failures_unlogged, quick_export, unguarded_module
from autopipe.trace._random import symbolic_trace
from autopipe.trace._state import state_kept
from autopipe.trace._unbacked import HINT as unbacked_hint
from autopipe.trace._unbacked import unbacked_origin
from autopipe.trace._vmap import FOLDED, fold_vmap_regions
from autopipe.trace.aliasing import storage_of, view_sources
from autopipe.trace.graph import Graph, NodeInfo, target_name
from autopipe.trace.no_grad import no_grad_nodes
from autopipe.trace.remade import remakable_nodes

_MAX_REASON = 300


@collections_paused  # [Note: no collections while tracing]
def trace(
    model: nn.Module,
    example_inputs: tuple[Any, ...],
    example_kwargs: dict[str, Any] | None = None,
    *,
    frontend: str = "auto",
) -> Graph:
    """Trace ``model`` on one example micro-batch into a Graph.

    ``symbolic_trace`` is tried first (it keeps ``call_module`` leaves, cheap to profile);
    when it fails, or its graph does not run on the example, ``torch.export`` is used.
    Works on the meta device: parameters and inputs may be meta tensors.

    Args:
        model: the model; it is not copied (the graph shares its parameters).
        example_inputs: positional arguments of one micro-batch.
        example_kwargs: keyword arguments of one micro-batch.
        frontend: ``"auto"``, ``"fx"`` or ``"export"``.

    Raises:
        ExampleInputError: the model does not accept the example inputs.
        TraceError: neither front end can trace the model.
    """
    if not isinstance(model, nn.Module):
        raise TraceError(f"expected a torch.nn.Module, got {type(model).__name__}",
                         hint="pass the model object itself")
    if not isinstance(example_inputs, tuple):
        raise ExampleInputError(
            f"example_inputs must be a tuple, got {type(example_inputs).__name__}",
            hint="wrap a single tensor as (x,)")
    if example_kwargs is not None and not (isinstance(example_kwargs, Mapping)
                                           and all(isinstance(k, str) for k in example_kwargs)):
        raise ExampleInputError(
            f"example_kwargs must be a dict of keyword arguments by name, got "
            f"{type(example_kwargs).__name__}", hint="pass e.g. {'attention_mask': mask}, or None")
    kwargs = dict(example_kwargs or {})
    if frontend not in ("auto", "fx", "export"):
        raise TraceError(f"unknown frontend {frontend!r}", hint="use auto, fx or export")
    example_inputs, kwargs = _check_devices(model, example_inputs, kwargs)
    functions: list[type] = []
    with _custom_functions(functions):
        graph = _trace(model, example_inputs, kwargs, frontend)
    if functions:
        _check_gradients_reach(graph, functions)
        _check_backward_runs(graph, functions, example_inputs, kwargs)
    return graph


def _trace(model: nn.Module, example_inputs: tuple[Any, ...], kwargs: dict[str, Any],
           frontend: str) -> Graph:
    reasons: list[str] = []
    if frontend in ("auto", "fx"):
        try:
            return _trace_fx(model, example_inputs, kwargs)
        except ExampleInputError:
            raise
        except Exception as e:
            reasons.append(f"torch.fx.symbolic_trace: {_short(e)}")
            if frontend == "fx":
                _raise_if_inputs_wrong(model, example_inputs, kwargs)
                raise TraceError(reasons[0], hint="try frontend='export'") from e
    try:
        return _trace_export(model, example_inputs, kwargs)
    except _DataDependentShape:
        raise  # traced, but a shape depends on the data: the diagnosis names the node
    except Exception as e:
        # [Note: sizes read from tensors]
        origin = unbacked_origin(e, lambda: _export_failure(model, example_inputs, kwargs))
        reasons.append(f"torch.export: {_short(e)}{origin}")
        _raise_if_inputs_wrong(model, example_inputs, kwargs)
        # [Note: layerdrop] in autopipe.trace._layerdrop
        drop = layerdrop_hint(model)
        general = ("make forward free of data-dependent Python control flow, build Hugging Face "
                   "models with use_cache=False, or pass inputs the model accepts")
        specific = drop or _meta_mix_hint(model, e) or _none_input_hint(model, example_inputs, kwargs, e) \
            or _labels_hint(model, example_inputs, kwargs) or (unbacked_hint if origin else None)
        raise TraceError("cannot trace the model; " + "; ".join(reasons),
                         hint=f"{specific}; otherwise {general}" if specific else general) from e


def _meta_mix_hint(model: nn.Module, e: BaseException) -> str | None:
    """A hint where a model built on meta makes a tensor on the CPU in ``forward`` and an op
    meets it with the meta weights (SAM's point labels, a wrapper's ``torch.ones(b, 1)``):
    torch's message names the two devices, not why there are two."""
    if type(e).__name__ != "FakeTensorDeviceMismatchError" or not any(
            p.device.type == "meta" for p in model.parameters()):
        return None
    return ("the model is on the meta device, but its forward makes a tensor on another device "
            "(a torch.ones, torch.tensor or arange without device=), which the trace meets with "
            "meta tensors: build the model on a real device, or make forward create its tensors "
            "on its inputs' or weights' device")


_LABELS = ("labels", "label", "start_positions", "end_positions")
"""The inputs from which Hugging Face models compute their own loss."""


def _labels_hint(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """A hint to compute the loss in ``loss_fn`` where the example gives the model its labels.

    A Hugging Face model handed ``labels`` computes its own loss, often after a check on
    their values that torch.export cannot trace (Wav2Vec2ForCTC: ``if labels.max() >=
    self.config.vocab_size``, then a CTC loss over ``labels.masked_select(...)``, whose shape
    depends on the data); the pipeline runs the loss on the last stage anyway."""
    bound = _bound(model, args, kwargs)
    given = [name for name in _LABELS if isinstance(bound.get(name), torch.Tensor)]
    if not given:
        return None
    return (f"the example gives the model {', '.join(given)}, from which it computes its own loss: "
            f"pass them as spec.batch's target instead and compute the loss from the output's logits "
            f"in loss_fn (it runs on the last stage)")


def _bound(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The example's inputs by the name ``forward`` gives them (``argument i`` where they do not bind)."""
    try:
        return dict(inspect.signature(model.forward).bind_partial(*args, **kwargs).arguments)
    except (TypeError, ValueError):
        return {f"argument {i}": a for i, a in enumerate(args)} | dict(kwargs)


def _none_input_hint(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
                     e: BaseException) -> str | None:
    """A hint naming the example's ``None`` inputs where torch.export stopped on a ``None``.

    A Hugging Face model builds a default for some inputs only outside compilation
    (Switch Transformers: ``if attention_mask is None and not is_torchdynamo_compiling()``),
    so an example that runs eagerly with ``None`` stops torch.export with "'NoneType' object
    is not subscriptable", and "pass inputs the model accepts" sent its user looking for
    an input the model refuses."""
    if not isinstance(e, (TypeError, AttributeError)) or "NoneType" not in str(e):
        return None
    nones = [name for name, value in _bound(model, args, kwargs).items() if value is None]
    if not nones:
        return None
    return (f"the example passes None as {', '.join(nones)}, which the model fills in itself when run "
            f"but not while torch.export traces it: pass a tensor (e.g. an attention mask of "
            f"torch.ones_like(input_ids))")


@contextlib.contextmanager
def _custom_functions(seen: list[type]) -> Iterator[None]:
    """Record in ``seen`` each ``torch.autograd.Function`` outside torch that the model applies
    while it is traced ([Note: custom autograd Functions])."""
    original = torch.autograd.Function.__dict__["apply"]

    def apply(cls: type, *args: Any, **kwargs: Any) -> Any:
        if not cls.__module__.startswith("torch.") and cls not in seen:
            seen.append(cls)
        return original.__func__(cls, *args, **kwargs)

    torch.autograd.Function.apply = classmethod(apply)  # type: ignore[assignment,method-assign]
    try:
        yield
    finally:
        torch.autograd.Function.apply = original  # type: ignore[method-assign]


# [Note: custom autograd Functions]
# Neither front end keeps a torch.autograd.Function: symbolic_trace and torch.export record
# the ops of its forward, and the stages differentiate those; its own backward never runs.
# Where the forward's ops are differentiable that is the forward's exact gradient (BLOOM's
# GeLUFunction), but a forward that computes under no_grad and leaves the gradient to its
# backward (Reformer's reversible layers) traces into a graph through which no gradient
# flows; worse, torch.export does not record the grad mode that Function.apply restores on
# return, so every op after it is traced under no_grad as well. Training such a graph fails
# much later with a loss "that does not depend on the model's output"; the trace refuses it
# here, naming the Function. A forward may also write in place a value its own ops saved for
# backward, harmless inside the Function (its forward records no graph) but not once traced:
# SEW-D's XSoftmax zeroes the masked entries of its softmax's output with ``masked_fill_``,
# and autograd refuses the backward through that softmax ("modified by an inplace
# operation") at the first training step. The trace runs one forward and backward of the
# example to find that here, and refuses it naming the Function too.

_NO_GRAD = {"detach", "torch.detach", "aten.detach.default", "aten.detach"}


def _check_gradients_reach(graph: Graph, functions: list[type]) -> None:
    """Raise TraceError when some parameter the graph reads gets no gradient from its output,
    the model having applied the custom autograd ``functions`` (whose backward is not traced)."""
    gm = graph.gm
    trainable = {name for name, p in gm.named_parameters(remove_duplicate=False) if p.requires_grad}
    modules = dict(gm.named_modules())

    def params_of(n: fx.Node) -> set[str]:
        if n.op == "get_attr" and str(n.target) in trainable:
            return {str(n.target)}
        if n.op == "call_module":
            prefix = f"{n.target}."
            return {prefix + k for k, p in modules[str(n.target)].named_parameters(remove_duplicate=False)
                    if p.requires_grad}
        return set()

    def blocks(n: fx.Node) -> bool:
        """Whether no gradient flows from ``n``'s output back into its inputs."""
        if n.op == "call_function" and n.target is torch.ops.higher_order.wrap_with_set_grad_enabled:
            return not n.args[0]
        return n.op in ("call_function", "call_method") and target_name(n) in _NO_GRAD

    used = set().union(*(params_of(n) for n in gm.graph.nodes if n.op == "call_module" or n.users))
    reached: set[str] = set()
    seen: set[fx.Node] = set()
    stack = [n for n in gm.graph.nodes if n.op == "output"]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        reached |= params_of(n)
        if not blocks(n):
            stack.extend(n.all_input_nodes)
    missing = sorted(used - reached)
    if missing:
        names = ", ".join(f"{f.__module__}.{f.__qualname__}" for f in functions)
        raise TraceError(
            f"the model applies the custom autograd Function {names}, whose backward the "
            f"traced graph cannot keep, and {len(missing)} of its parameters get no gradient "
            f"through the graph ({', '.join(missing[:3])}{', …' if len(missing) > 3 else ''})",
            hint="trace a model whose forward is differentiable without the Function's own "
                 "backward (its ops outside torch.no_grad)")


def _check_backward_runs(graph: Graph, functions: list[type], args: tuple[Any, ...],
                         kwargs: dict[str, Any]) -> None:
    """Raise TraceError when autograd refuses to differentiate the graph on the example because
    an op wrote in place a value saved for backward, the model having applied the custom
    autograd ``functions``. The graph's buffers (batch norm's statistics) and the random
    state are restored after; a model on the meta device is not checked, and any other failure
    gives no verdict (training reports it, if it is real)."""
    gm = graph.gm
    tensors = [*gm.parameters(), *gm.buffers()]
    if any(t.device.type == "meta" for t in tensors):
        return
    params = [p for p in gm.parameters() if p.requires_grad]
    try:
        with state_kept(gm), torch.enable_grad():
            out = gm(*graph.flat_inputs(args, kwargs))
            leaves = [t for t in pytree.tree_leaves(out)
                      if isinstance(t, torch.Tensor) and t.requires_grad]
            if leaves:
                torch.autograd.grad(leaves, params, [torch.ones_like(t) for t in leaves],
                                    allow_unused=True)
    except RuntimeError as e:
        if "modified by an inplace operation" not in str(e):
            return
        names = ", ".join(f"{f.__module__}.{f.__qualname__}" for f in functions)
        raise TraceError(
            f"the model applies the custom autograd Function {names}, whose backward the "
            f"traced graph cannot keep, and the traced ops of its forward cannot be "
            f"differentiated: {_short(e)}",
            hint="trace a model whose forward is differentiable without the Function's own "
                 "backward (no in-place writes to values its ops save for backward)") from e
    except Exception:  # no verdict: see the docstring
        return


def _short(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip().splitlines()
    first = text[0] if text else type(e).__name__
    first = first if len(first) <= _MAX_REASON else first[:_MAX_REASON] + "…"
    return first + _model_frame(e)


_NOT_MODEL = (os.path.dirname(torch.__file__), os.path.dirname(os.path.dirname(__file__)))
"""torch's and autopipe's own code: the frames that are not the model's."""


def _model_frame(e: BaseException) -> str:
    """`` (at FILE:LINE in FUNCTION: CODE)`` for the innermost frame of ``e``'s traceback in
    the model's code (neither torch's nor autopipe's), or "". torch puts the same line far
    down its message ("The following call raised this error"), which _short cuts off."""
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if not f.filename.startswith(_NOT_MODEL) and not f.filename.startswith("<")]
    if not frames:
        return ""
    f = frames[-1]
    where = f.filename.split("site-packages/", 1)[-1]
    return f" (at {where}:{f.lineno} in {f.name}: {(f.line or '').strip()[:80]})"


def _check_devices(model: nn.Module, args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The example inputs to trace with: as given, or meta copies for a model on the meta device
    (whose batches stay real: training feeds them once each rank holds real weights)."""
    devices = {p.device.type for p in model.parameters()}
    leaves = [x for x in pytree.tree_leaves((args, kwargs)) if isinstance(x, torch.Tensor)]
    inputs = {x.device.type for x in leaves}
    if devices == {"meta"} and inputs - devices:
        return pytree.tree_map_only(torch.Tensor, lambda t: t.to("meta"), (args, kwargs))  # type: ignore[no-any-return]
    if len(devices) == 1 and inputs and not inputs <= devices:
        raise ExampleInputError(
            f"model parameters are on {devices.pop()} but example inputs are on {', '.join(sorted(inputs))}",
            hint="create the example inputs on the model's device")
    return args, kwargs


def _raise_if_inputs_wrong(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """If running the eager model on the example fails too, the example is what is wrong."""
    if any(p.device.type == "meta" for p in model.parameters()):
        return  # eager models often cannot run on meta (.item()); nothing to learn
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    except Exception as e:
        raise ExampleInputError(
            f"the model does not accept the example inputs: {_short(e)}",
            hint="pass one micro-batch of the shapes and dtypes the model's forward expects",
        ) from e


class _MetaRecorder(fx.Interpreter):
    """Runs a graph once and stores each output's metadata as a meta tensor in ``meta['val']``."""

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        n.meta["val"] = pytree.tree_map_only(
            torch.Tensor, lambda t: torch.empty_like(t, device="meta"), out)
        return out


def _keep_unread(model: nn.Module, gm: fx.GraphModule) -> None:
    """Put into ``gm`` the parameters and persistent buffers of ``model`` that its graph never
    reads: ``symbolic_trace`` copies only what the graph reads, but they are the model's too
    ([Note: unread parameters] in ``autopipe.runtime.split``), as torch.export keeps them."""
    held = {id(t) for t in (*gm.parameters(), *gm.buffers())}
    params = dict(model.named_parameters(remove_duplicate=False))
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in held:
            continue
        held.add(id(t))
        path, _, leaf = name.rpartition(".")
        owner: nn.Module = gm
        for part in path.split(".") if path else ():
            if not hasattr(owner, part):
                owner.add_module(part, nn.Module())
            owner = getattr(owner, part)
        if name in params:
            owner.register_parameter(leaf, params[name])
        else:
            owner.register_buffer(leaf, t)


def _trace_fx(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Graph:
    gm = symbolic_trace(model)  # [Note: draws from constant arguments]
    _keep_unread(model, gm)
    signature = inspect.signature(model.forward)
    names = [n.target for n in gm.graph.nodes if n.op == "placeholder"]
    if any(str(n).startswith("*") for n in names):
        raise TraceError("forward takes *args or **kwargs", hint="name every input of forward")
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as e:
        raise ExampleInputError(f"example inputs do not match forward{signature}: {e}",
                                hint="pass the arguments the model's forward takes") from None
    bound.apply_defaults()
    flat = [bound.arguments[str(n)] for n in names]
    out_spec = _flatten_output(gm)
    # the run must not move batch norm's statistics or the random state: the graph shares
    # the model's buffers, and training would start one forward late (until 2026-12-07)
    with torch.no_grad(), state_kept(gm):
        _MetaRecorder(gm).run(*flat)
    return _build(gm, model, "fx", [str(n) for n in names], None, out_spec, signature)


def _trace_export(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Graph:
    with warnings.catch_warnings(), phase("trace.export"):
        warnings.simplefilter("ignore")
        # [Note: a quicker export], [Note: a module's own dtype inside forward],
        # [Note: distributions built inside forward]
        # [Note: constants made while tracing on meta]
        on_meta = any(t.is_meta for t in (*model.parameters(), *model.buffers()))
        with quick_export(), own_dtype_conversions_kept(), distribution_checks_off(), failures_unlogged(), \
                constants_recorded(on_meta) as made:
            ep = torch.export.export(model, args, kwargs, strict=False)
        gm = unguarded_module(ep)
    assert isinstance(gm, fx.GraphModule)
    remember_constants(gm, made)
    codegen = gm.graph._codegen
    info = getattr(codegen, "pytree_info", None)
    if info is None:  # pragma: no cover - depends on the torch version
        raise TraceError("torch.export produced a module without pytree info",
                         hint="upgrade torch to 2.5 or newer")
    for n in list(gm.graph.nodes):
        # the input guards are a call into a generated submodule; shapes are checked elsewhere
        if n.op == "call_module" and str(n.target).startswith("_guards"):
            gm.graph.erase_node(n)
    with phase("trace.graph"):
        gm.graph._codegen = fx.graph.CodeGen()
        fold_vmap_regions(gm)  # [Note: vmap regions]
        gm.recompile()
        names = [str(n.target) for n in gm.graph.nodes if n.op == "placeholder"]
        return _build(gm, model, "export", names, info.in_spec, info.out_spec, None)


def _export_failure(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> BaseException | None:
    """The error of exporting ``model`` as ``_trace_export`` does but with stack traces on, or
    None if it exports ([Note: sizes read from tensors] in ``autopipe.trace._unbacked``)."""
    try:  # outside failures_unlogged, which leaves out the partial graph it prints only as it raises
        with warnings.catch_warnings(), own_dtype_conversions_kept(), distribution_checks_off(), \
                failures_unlogged():
            warnings.simplefilter("ignore")
            torch.export.export(model, args, kwargs, strict=False)
    except Exception as e:
        return e
    return None


def _flatten_output(gm: fx.GraphModule) -> pytree.TreeSpec:
    """Make the graph return a flat tuple; return the spec that rebuilds the original output."""
    out = next(n for n in gm.graph.nodes if n.op == "output")
    leaves, spec = pytree.tree_flatten(out.args[0])
    out.args = (tuple(leaves),)
    gm.recompile()
    return spec


class _DataDependentShape(TraceError):
    """A traced node whose output's shape depends on tensor values ([Note: data-dependent shapes])."""


# [Note: data-dependent shapes]
#
# torch.export traces an op whose output size depends on tensor values (a boolean-mask
# index, nonzero, masked_select, unique) with an unbacked size symbol (u0). autopipe
# records every node's shape as integers to plan memory and to size the buffers stages
# exchange, and int(u0) raised torch's GuardOnDataDependentSymNode from _describe, which
# _trace reported as if the model could not be traced at all ("make forward free of
# data-dependent Python control flow"), naming neither the node nor the op (Idefics3 and
# SmolVLM drop all-padding images with pixel_values[real_images_inds]). _build refuses
# such a node by name, op and module instead.


def _check_static(n: fx.Node, val: Any) -> None:
    """Raise _DataDependentShape if a tensor ``n`` records has a size that depends on the data."""
    for t in pytree.tree_leaves(val):
        if not isinstance(t, torch.Tensor):
            continue
        for s in t.shape:
            try:
                int(s)
            except Exception:
                where = _module_of(n)
                raise _DataDependentShape(
                    f"{n.name} ({target_name(n)}{f' in {where}' if where else ''}) has a shape that "
                    f"depends on the data: ({', '.join(str(x) for x in t.shape)}); autopipe plans and "
                    "sends tensors whose shapes are known before the model runs",
                    hint=("make the size independent of tensor values (a boolean-mask index, "
                          "nonzero, a split by sizes computed as tensors), e.g. keep every "
                          "element and mask it instead"),
                ) from None


def _describe(val: Any) -> tuple[tuple[int, ...] | None, str | None, int, bool]:
    """(shape, dtype, bytes, is_tensor) of a node's recorded output."""
    if isinstance(val, torch.Tensor):
        nbytes = val.numel() * val.element_size()
        return tuple(int(s) for s in val.shape), str(val.dtype).removeprefix("torch."), int(nbytes), True
    tensors = [t for t in pytree.tree_leaves(val) if isinstance(t, torch.Tensor)]
    return None, None, int(sum(t.numel() * t.element_size() for t in tensors)), False


def _module_of(n: fx.Node) -> str:
    if n.op == "call_module" and not n.meta.get(FOLDED):  # [Note: vmap regions]
        return str(n.target)
    if n.op in ("placeholder", "output"):
        return ""
    stack = n.meta.get("nn_module_stack")
    if stack:
        path = str(list(stack.values())[-1][0])
        return path.split("@", 1)[0]
    return ""


def _build(
    gm: fx.GraphModule,
    model: nn.Module,
    frontend: str,
    input_names: list[str],
    in_spec: pytree.TreeSpec | None,
    out_spec: pytree.TreeSpec,
    signature: inspect.Signature | None,
) -> Graph:
    # canonical parameter names and tie groups, by identity
    aliases: dict[int, list[str]] = defaultdict(list)
    for name, p in gm.named_parameters(remove_duplicate=False):
        aliases[id(p)].append(name)
    canonical = {name: names[0] for names in aliases.values() for name in names}
    param_bytes = {names[0]: _nbytes(gm.get_parameter(names[0])) for names in aliases.values()}
    tied = [tuple(names) for names in aliases.values() if len(names) > 1]
    modules = dict(gm.named_modules())

    def reads(n: fx.Node) -> tuple[list[str], list[str]]:
        """(parameters, buffers) a node reads: call_module state and get_attr inputs."""
        params: list[str] = []
        buffers: list[str] = []
        if n.op == "call_module":
            sub = modules[str(n.target)]
            prefix = f"{n.target}."
            params += [canonical[prefix + k] for k, _ in sub.named_parameters(remove_duplicate=False)]
            buffers += [prefix + k for k, _ in sub.named_buffers()]
        for a in n.all_input_nodes:
            if a.op == "get_attr":
                t = str(a.target)
                if t in canonical:
                    params.append(canonical[t])
                else:
                    buffers.append(t)
        return list(dict.fromkeys(params)), list(dict.fromkeys(buffers))

    infos: list[NodeInfo] = []
    owned: set[str] = set()
    for n in gm.graph.nodes:
        if n.op == "get_attr":
            continue
        params, buffers = reads(n)
        mine = [p for p in params if p not in owned]
        owned.update(mine)
        _check_static(n, n.meta.get("val"))  # [Note: data-dependent shapes]
        shape, dtype, nbytes, is_tensor = _describe(n.meta.get("val"))
        if n.op == "output":
            shape, dtype, nbytes, is_tensor = None, None, 0, False
        infos.append(NodeInfo(
            name=n.name, op=n.op, target=target_name(n), module=_module_of(n),
            shape=shape, dtype=dtype, output_bytes=nbytes, is_tensor=is_tensor,
            params=tuple(mine), shared_params=tuple(p for p in params if p not in mine),
            buffers=tuple(buffers),
            inputs=tuple(dict.fromkeys(a.name for a in n.all_input_nodes if a.op != "get_attr")),
            embedding=_is_embedding(n, modules), linear=_is_linear(n, modules),
        ))
    remakable = remakable_nodes(gm, (n.name for n in infos if n.params or n.shared_params),
                                {n.name for n in infos if n.is_tensor})
    infos = [replace(n, remakable=True) if n.name in remakable else n for n in infos]
    gradless = no_grad_nodes(infos)
    infos = [replace(n, no_grad=True) if n.name in gradless else n for n in infos]
    views = view_sources(gm, {n.name for n in infos if n.is_tensor})
    nodes = {n.name: n for n in gm.graph.nodes}

    def param_view(name: str) -> bool:  # its storage is a parameter's (NodeInfo.param_view)
        source = nodes[storage_of(name, views)]
        return source.op == "get_attr" and str(source.target) in canonical

    infos = [replace(n, param_view=True) if n.name in views and param_view(n.name) else n for n in infos]
    unused = [p for p in param_bytes if p not in owned]
    if unused:
        # parameters no node reads are owned by the output node so that totals stay true
        out = infos[-1]
        infos[-1] = replace(out, params=out.params + tuple(unused))
    return Graph(gm=gm, nodes=infos, param_bytes=param_bytes, tied=tied, frontend=frontend,
                 input_names=input_names, in_spec=in_spec, out_spec=out_spec, signature=signature)


def _is_embedding(n: fx.Node, modules: dict[str, torch.nn.Module]) -> bool:
    """``aten.embedding``, or a leaf ``nn.Embedding`` whose weight's gradient autopipe's CPU
    ranks accumulate row by row (``autopipe.runtime.grad_accum``). (An exported lookup that
    renormalises its rows is an ``aten.embedding`` too, but its weight has a second reader,
    the renormalisation, so neither the zero-page charge nor the rows line applies.)"""
    if n.op == "call_function":
        return n.target is torch.ops.aten.embedding.default
    if n.op != "call_module":
        return False
    m = modules.get(str(n.target))
    return (type(m) is torch.nn.Embedding and m.max_norm is None and not m.scale_grad_by_freq
            and not m.sparse)


def _is_linear(n: fx.Node, modules: dict[str, torch.nn.Module]) -> bool:
    """``aten.linear``, or a leaf ``nn.Linear`` (exactly that class), as the CPU ranks'
    ``fuse_weight_grads`` finds them (``autopipe.runtime.grad_accum``)."""
    if n.op == "call_function":
        return n.target is torch.ops.aten.linear.default
    return n.op == "call_module" and type(modules.get(str(n.target))) is torch.nn.Linear


def _nbytes(t: torch.Tensor) -> int:
    return int(t.numel() * t.element_size())

