"""``trace(model, inputs)``: torch.fx.symbolic_trace first, torch.export as fallback → Graph."""

from __future__ import annotations

import inspect
import warnings
from collections import defaultdict
from dataclasses import replace
from typing import Any

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch import nn

from autopipe._gc import collections_paused
from autopipe._phases import phase
from autopipe.errors import ExampleInputError, TraceError
from autopipe.trace._quick import quick_export, unguarded_module
from autopipe.trace.graph import Graph, NodeInfo, target_name

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
    kwargs = dict(example_kwargs or {})
    if frontend not in ("auto", "fx", "export"):
        raise TraceError(f"unknown frontend {frontend!r}", hint="use auto, fx or export")
    example_inputs, kwargs = _check_devices(model, example_inputs, kwargs)
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
    except Exception as e:
        reasons.append(f"torch.export: {_short(e)}")
        _raise_if_inputs_wrong(model, example_inputs, kwargs)
        raise TraceError(
            "cannot trace the model; " + "; ".join(reasons),
            hint=("make forward free of data-dependent Python control flow, build Hugging Face "
                  "models with use_cache=False, or pass inputs the model accepts"),
        ) from e


def _short(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip().splitlines()
    first = text[0] if text else type(e).__name__
    return first if len(first) <= _MAX_REASON else first[:_MAX_REASON] + "…"


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


def _trace_fx(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Graph:
    gm = fx.symbolic_trace(model)
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
    with torch.no_grad():
        _MetaRecorder(gm).run(*flat)
    return _build(gm, model, "fx", [str(n) for n in names], None, out_spec, signature)


def _trace_export(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Graph:
    with warnings.catch_warnings(), phase("trace.export"):
        warnings.simplefilter("ignore")
        with quick_export():  # [Note: a quicker export]
            ep = torch.export.export(model, args, kwargs, strict=False)
        gm = unguarded_module(ep)
    assert isinstance(gm, fx.GraphModule)
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
        gm.recompile()
        names = [str(n.target) for n in gm.graph.nodes if n.op == "placeholder"]
        return _build(gm, model, "export", names, info.in_spec, info.out_spec, None)


def _flatten_output(gm: fx.GraphModule) -> pytree.TreeSpec:
    """Make the graph return a flat tuple; return the spec that rebuilds the original output."""
    out = next(n for n in gm.graph.nodes if n.op == "output")
    leaves, spec = pytree.tree_flatten(out.args[0])
    out.args = (tuple(leaves),)
    gm.recompile()
    return spec


def _describe(val: Any) -> tuple[tuple[int, ...] | None, str | None, int, bool]:
    """(shape, dtype, bytes, is_tensor) of a node's recorded output."""
    if isinstance(val, torch.Tensor):
        nbytes = val.numel() * val.element_size()
        return tuple(int(s) for s in val.shape), str(val.dtype).removeprefix("torch."), int(nbytes), True
    tensors = [t for t in pytree.tree_leaves(val) if isinstance(t, torch.Tensor)]
    return None, None, int(sum(t.numel() * t.element_size() for t in tensors)), False


def _module_of(n: fx.Node) -> str:
    if n.op == "call_module":
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
        shape, dtype, nbytes, is_tensor = _describe(n.meta.get("val"))
        if n.op == "output":
            shape, dtype, nbytes, is_tensor = None, None, 0, False
        infos.append(NodeInfo(
            name=n.name, op=n.op, target=target_name(n), module=_module_of(n),
            shape=shape, dtype=dtype, output_bytes=nbytes, is_tensor=is_tensor,
            params=tuple(mine), shared_params=tuple(p for p in params if p not in mine),
            buffers=tuple(buffers),
            inputs=tuple(dict.fromkeys(a.name for a in n.all_input_nodes if a.op != "get_attr")),
        ))
    unused = [p for p in param_bytes if p not in owned]
    if unused:
        # parameters no node reads are owned by the output node so that totals stay true
        out = infos[-1]
        infos[-1] = replace(out, params=out.params + tuple(unused))
    return Graph(gm=gm, nodes=infos, param_bytes=param_bytes, tied=tied, frontend=frontend,
                 input_names=input_names, in_spec=in_spec, out_spec=out_spec, signature=signature)


def _nbytes(t: torch.Tensor) -> int:
    return int(t.numel() * t.element_size())

