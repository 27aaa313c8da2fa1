"""ModelSpec (a model plus how to feed and train it) and ``load_spec("file.py:fn")``."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import nn

from autopipe.errors import SpecError

LossFn = Callable[[Any, torch.Tensor], torch.Tensor]
BatchFn = Callable[..., tuple[tuple[Any, ...], torch.Tensor]]


@dataclass(kw_only=True)
class ModelSpec:
    """A model together with one example micro-batch and its training recipe."""

    model: nn.Module
    """The model to partition (may live on the meta device)."""
    example_inputs: tuple[Any, ...]
    """Positional arguments of one micro-batch."""
    example_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of one micro-batch."""
    loss_fn: LossFn
    """``loss_fn(output, target) -> scalar``; ``output`` is what the model returns."""
    batch: BatchFn
    """``batch(n, step=0) -> (inputs, target)``: ``n`` micro-batches stacked on dim 0,
    the same for the same ``(n, step)`` (so every rank draws identical data)."""
    name: str = "model"
    """A short name for reports."""
    init_weights: Callable[[nn.Module], None] | None = None
    """``init_weights(module)`` initialises the tensors a module holds itself (not its
    children's), in place; for a model built on the meta device, each rank calls it on the
    modules of its own stages once their tensors exist (``autopipe.runtime.materialize``).
    None: each module's ``reset_parameters()``. A Hugging Face model's is its
    ``_init_weights``."""

    def __post_init__(self) -> None:
        if not isinstance(self.model, nn.Module):
            raise SpecError(
                f"ModelSpec.model must be a torch.nn.Module, got {type(self.model).__name__}",
                hint="return ModelSpec(model=MyModel(...), ...)",
            )
        if not isinstance(self.example_inputs, tuple):
            raise SpecError(
                f"ModelSpec.example_inputs must be a tuple, got {type(self.example_inputs).__name__}",
                hint="wrap a single tensor as (x,)",
            )
        if not isinstance(self.example_kwargs, dict):
            raise SpecError(
                f"ModelSpec.example_kwargs must be a dict, got {type(self.example_kwargs).__name__}",
                hint="pass keyword inputs as a dict, or leave it out",
            )
        for what in ("loss_fn", "batch"):
            if not callable(getattr(self, what)):
                raise SpecError(f"ModelSpec.{what} must be callable", hint=f"pass a function as {what}=")
        if self.init_weights is not None and not callable(self.init_weights):
            raise SpecError("ModelSpec.init_weights must be callable or None",
                            hint="pass a function init_weights(module) that fills the module's own tensors")


def _import_file(path: Path) -> Any:
    name = f"_autopipe_spec_{abs(hash(str(path.resolve())))}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SpecError(f"cannot import {path}", hint="point at a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise SpecError(f"importing {path} failed: {type(e).__name__}: {e}",
                        hint="fix the error in that file") from e
    return module


def load_spec(spec: str, **kwargs: Any) -> ModelSpec:
    """Load a ModelSpec from ``"path/to/file.py:function"`` or ``"package.module:function"``.

    Args:
        spec: where the build function lives.
        **kwargs: passed to the build function (model size knobs, ``device="meta"``).

    Raises:
        SpecError: the string points nowhere or the function returns no ModelSpec.
    """
    where, sep, fn_name = spec.rpartition(":")
    if not sep or not where or not fn_name:
        raise SpecError(
            f"spec {spec!r} has no ':function' part",
            hint="write path/to/file.py:build or package.module:build",
        )
    if where.endswith(".py") or "/" in where:
        path = Path(where)
        if not path.is_file():
            raise SpecError(f"spec file {where} does not exist", hint="check the path before ':'")
        module = _import_file(path)
    else:
        if "" not in sys.path and str(Path.cwd()) not in sys.path:
            sys.path.append(str(Path.cwd()))  # like `python -m`, find modules under the cwd
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise SpecError(f"cannot import module {where!r}: {e}",
                            hint="check the module name, or use path/to/file.py:build") from e
    fn = getattr(module, fn_name, None)
    if fn is None or not callable(fn):
        found = sorted(n for n, v in vars(module).items() if inspect.isfunction(v) and not n.startswith("_"))
        raise SpecError(f"{where} has no function {fn_name!r}",
                        hint=f"functions there: {', '.join(found) or 'none'}")
    try:
        result = fn(**kwargs)
    except SpecError:
        raise
    except TypeError as e:
        raise SpecError(f"{spec}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) failed: {e}",
                        hint="check the knobs the build function accepts") from e
    except Exception as e:
        frames = traceback.extract_tb(e.__traceback__)
        own = inspect.getsourcefile(fn) if inspect.isfunction(fn) else None
        where_raised = next((f for f in reversed(frames) if f.filename == own), frames[-1])
        first = (str(e).strip().splitlines() or [""])[0]
        raise SpecError(
            f"{spec}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) failed: "
            f"{type(e).__name__}: {first} (at {where_raised.filename}:{where_raised.lineno})",
            hint="fix the build function or the --spec-arg knobs given to it") from e
    if not isinstance(result, ModelSpec):
        raise SpecError(
            f"{spec} returned {type(result).__name__}, expected autopipe.ModelSpec",
            hint="return ModelSpec(model=..., example_inputs=(...,), loss_fn=..., batch=...)",
        )
    if not result.name or result.name == "model":
        result.name = Path(where).stem if where.endswith(".py") else where.rsplit(".", 1)[-1]
    return result


def load_spec_for_estimate(spec: str, **kwargs: Any) -> tuple[ModelSpec, str | None]:
    """``load_spec`` for an estimate, which never reads the weights: built on the meta device
    through the build function's ``device`` knob where it has one and none is given, then
    given uninitialised storage where its example inputs are ([Note: building for an
    estimate]).

    Returns:
        The spec, and why it was built with weights after all (None where it was not, or
        where the caller chose the device).

    Raises:
        SpecError: as ``load_spec``, from the build with weights.
    """
    if "device" in kwargs:
        return load_spec(spec, **kwargs), None
    try:
        built = load_spec(spec, **kwargs, device="meta")
    except SpecError as e:
        if "unexpected keyword argument 'device'" in e.message:
            why = "its build function has no device knob"
        else:
            why = f"building it on the meta device failed: {e.message}"
        return load_spec(spec, **kwargs), why
    tensors = [t for t in pytree.tree_leaves((built.example_inputs, built.example_kwargs))
               if isinstance(t, torch.Tensor)]
    where = {t.device for t in tensors} or {torch.device("cpu")}
    if len(where) > 1 or torch.device("meta") in where:
        return load_spec(spec, **kwargs), (f"with device='meta' its example inputs are on "
                                           f"{', '.join(sorted(map(str, where)))}, not one real device")
    _materialize(built.model, where.pop())
    return built, None


def _materialize(model: nn.Module, device: torch.device) -> None:
    """Give a meta ``model`` uninitialised storage on ``device``, keeping tied parameters
    (and buffers) one tensor: ``Module.to_empty`` unties them, which changes the graph."""
    for named in (model.named_parameters(remove_duplicate=False),
                  model.named_buffers(remove_duplicate=False)):
        new: dict[int, torch.Tensor] = {}
        for name, t in list(named):
            owner, _, attr = name.rpartition(".")
            module = model.get_submodule(owner)
            if id(t) not in new:
                empty = torch.empty_like(t, device=device)
                new[id(t)] = nn.Parameter(empty, t.requires_grad) if isinstance(t, nn.Parameter) else empty
            if isinstance(t, nn.Parameter):
                module._parameters[attr] = new[id(t)]  # type: ignore[assignment]
            else:
                module._buffers[attr] = new[id(t)]


# [Note: building for an estimate]
#
# An estimate prices every node on meta tensors (``autopipe.profile.estimate`` copies a
# real model to meta first), so the weights a build draws are never read: drawing GPT-2
# medium's at random took 43 s of a 92 s ``--batch-size 64 --schedule auto`` search (7
# micro-batch sizes, ~6 s each). ``autopipe plan --device-spec`` therefore builds with
# ``device="meta"`` where the build function takes it (the examples keep their example
# inputs real there: token ids stay on the CPU), then gives the model uninitialised
# storage on the inputs' device (0.04 s, pages untouched; tied weights kept tied, which
# ``Module.to_empty`` does not). Not tracing the
# meta model itself: torch.export of a meta GPT-2 has 2 more ``contiguous`` nodes (SDPA's
# output strides differ on meta), so its plan would name other nodes and carry another
# graph fingerprint than the model ``autopipe train`` builds. The build falls back to a
# normal one, saying why, where it has no such knob, fails on meta, leaves its inputs on
# meta, or where tracing or estimating fails; the plan is byte-identical either way
# (``tests/test_cli_plan_meta.py``). ``autopipe profile --device meta`` builds the same
# way (``autopipe.cli._estimate_build``), and so does ``plan --profile``, which reads no
# weights either: the three trace one graph, so the profile fits and plans as
# ``--device-spec`` does (a 70B shape without ``device=meta``: 0.5 GB resident, its
# ~280 GB of fp32 storage never touched). Given ``device=meta``, all three trace on meta.


def parse_spec_args(items: list[str] | None) -> dict[str, Any]:
    """Parse CLI ``--spec-arg key=value`` items; values are read as Python literals when possible."""
    import ast

    out: dict[str, Any] = {}
    for item in items or []:
        key, eq, raw = item.partition("=")
        if not eq or not key.isidentifier():
            raise SpecError(f"--spec-arg {item!r} is not key=value", hint="write e.g. --spec-arg n_layer=4")
        try:
            out[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key] = raw
    return out


def scalar_loss(loss: Any) -> torch.Tensor:
    """``loss`` as ``loss_fn`` returned it, when it is a loss to differentiate: a one-element
    floating-point tensor that autograd reaches from the model's output (where gradients are
    on: ``Pipe.evaluate`` runs the loss without them).

    Raises:
        SpecError: anything else (a float, per-sample losses, a constant), naming it.
    """
    if isinstance(loss, torch.Tensor) and loss.numel() == 1 and loss.is_floating_point() \
            and (loss.grad_fn is not None or not torch.is_grad_enabled()):
        return loss
    what = (f"a {type(loss).__name__}" if not isinstance(loss, torch.Tensor) else
            f"a tensor of shape {tuple(loss.shape)}" if loss.numel() != 1 else
            f"a {loss.dtype} tensor" if not loss.is_floating_point() else
            "a tensor that does not depend on the model's output")
    raise SpecError(f"loss_fn returned {what}, not a scalar loss to differentiate",
                    hint="return one floating-point tensor computed from the output, e.g. the "
                         "mean of the per-sample losses")


def logits_of(output: Any) -> torch.Tensor:
    """The logits tensor of a model output: a tensor, a Hugging Face ModelOutput, a dict or a tuple."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict) or hasattr(output, "keys"):
        if "logits" in output:
            return output["logits"]  # type: ignore[no-any-return]
        output = tuple(output.values())
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise SpecError(f"cannot find logits in a {type(output).__name__}",
                    hint="make loss_fn take the model's output type apart itself")


def cross_entropy(output: Any, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``logits_of(output)`` against integer targets (-100 ignored)."""
    logits = logits_of(output)
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1), ignore_index=-100)


def generator(n: int, step: int, seed: int = 0) -> torch.Generator:
    """A CPU generator seeded by ``(n, step, seed)``: every rank draws the same batch."""
    return torch.Generator().manual_seed(1_000_003 * seed + 10_007 * step + n)


def example_target(spec: ModelSpec) -> Any:
    """The target of one micro-batch (``spec.batch(1)``'s), for profiling the loss; None
    where the spec gives none (a loss of the output alone: it is profiled without one).

    Raises:
        SpecError: ``spec.batch`` fails or returns no ``(inputs, target)`` pair, or a target
            that is not one tensor.
    """
    try:
        _, target = spec.batch(1)
    except Exception as e:
        raise SpecError(f"spec.batch(1) failed: {type(e).__name__}: {e}",
                        hint="batch(n, step=0) must return (inputs, target) for n micro-batches") from e
    return None if target is None else tensor_target(target, "spec.batch(1)")


def tensor_target(target: Any, where: str) -> torch.Tensor:
    """``target`` where it is one tensor, which the schedules cut into micro-batches along dim 0.

    Raises:
        SpecError: anything else (a tuple of labels and lengths, a dict), naming it.
    """
    if isinstance(target, torch.Tensor):
        return target
    what = (f"a {type(target).__name__} of {len(target)}" if isinstance(target, (tuple, list, dict))
            else f"a {type(target).__name__}")
    raise SpecError(f"{where} gave {what} as the target, but a target must be one tensor "
                    f"(the pipeline cuts it into micro-batches along dim 0)",
                    hint="stack the target's parts into one tensor, one row per sample (e.g. "
                         "torch.cat([labels, lengths[:, None]], 1)), and take them apart in loss_fn")
