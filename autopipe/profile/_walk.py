"""The fx Interpreter both profilers share: run the graph node by node, cost each node alone."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.utils._pytree as pytree

from autopipe._dense import dense_on_cpu, is_group_norm
from autopipe.errors import AutopipeError, ProfileError
from autopipe.profile._node import NodeCall, Op, prepare
from autopipe.profile._progress import Progress
from autopipe.profile._values import reads_values
from autopipe.trace.graph import checks_only, target_name


@dataclass(frozen=True, slots=True)
class NodeCost:
    """What a profiler found out about one node."""

    forward_s: float = 0.0
    backward_input_s: float = 0.0
    backward_weight_s: float = 0.0
    activation_bytes: int = 0
    scratch_bytes: int = 0


def tensor_bytes(value: Any) -> int:
    """Bytes of every tensor in ``value`` (views counted at their own size)."""
    return sum(t.numel() * t.element_size() for t in pytree.tree_leaves(value)
               if isinstance(t, torch.Tensor))


class NodeWalker(fx.Interpreter):
    """Runs a GraphModule and calls ``cost(call)`` for every computing node.

    Placeholders, ``get_attr`` and the output node run as usual and cost nothing.
    Subclasses implement ``cost``, which must run ``call.run()`` once and return its
    output (fed to later nodes) together with the node's NodeCost; any further runs
    go through ``call.fresh()`` and ``call.forward()`` ([Note: in-place writes while
    profiling] in ``_mutation.py``).

    Args:
        gm: the module to run (on the profiling device and dtype).
        device: the profiling device (named in errors).
        progress: where to report each finished node.
    """

    def __init__(self, gm: fx.GraphModule, *, device: torch.device, progress: Progress) -> None:
        super().__init__(gm)
        self.device = device
        self.progress = progress
        self.param_ids = {id(p) for p in gm.parameters()}
        self.costs: dict[str, NodeCost] = {}
        self.output_bytes: dict[str, int] = {}
        self.skipped = checks_only(gm) if device.type == "meta" else set()
        """Runtime checks, which read values that meta tensors do not have (not run, no cost)."""

    def cost(self, call: NodeCall) -> tuple[Any, NodeCost]:  # pragma: no cover - abstract
        raise NotImplementedError

    def op_for(self, n: fx.Node) -> Op:
        """How to run node ``n`` on argument values (subclasses may substitute kernels)."""
        method: Callable[[Any, tuple[Any, ...], dict[str, Any]], Any] = getattr(self, n.op)
        if isinstance(self.module, fx.GraphModule) and is_group_norm(self.module, n):
            # torch's CPU kernel crashes timing the weight pass on a channels-last input
            # ([Note: group norm in a weight pass] in autopipe.runtime.norms)
            return lambda a, k: method(n.target, (dense_on_cpu(a[0]), *a[1:]), k)
        return lambda a, k: method(n.target, a, k)

    def run_node(self, n: fx.Node) -> Any:
        if n.op in ("placeholder", "get_attr", "output"):
            out = super().run_node(n)
            if n.op != "get_attr":
                self.costs[n.name] = NodeCost()
                self.output_bytes[n.name] = tensor_bytes(out) if n.op == "placeholder" else 0
            return out
        if n.name in self.skipped:
            self.costs[n.name] = NodeCost()
            self.output_bytes[n.name] = 0
            self.progress.step(n.name)
            return None
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        module = self.fetch_attr(str(n.target)) if n.op == "call_module" else None
        op = self.op_for(n)
        try:
            call = prepare(n, args, kwargs, op=op, param_ids=self.param_ids, module=module)
            out, cost = self.cost(call)
            call.finish()
        except AutopipeError:
            raise
        except torch.OutOfMemoryError as e:
            raise ProfileError(
                f"node {n.name} ({target_name(n)}) ran out of memory on {self.device}: {first_line(e)}",
                hint="profile a smaller micro-batch, or use `--device meta` (estimate)") from None
        except Exception as e:
            if self.device.type == "meta" and reads_values(e):  # [Note: a loss that reads values, estimated]
                raise ProfileError(
                    f"node {n.name} ({target_name(n)}) cannot run on meta tensors: the model's forward "
                    f"reads a tensor's values there (.item(), float(), .tolist(), a shape that depends "
                    f"on the data) or calls an op with no meta kernel, which an estimate cannot price "
                    f"(its loss could run on stand-ins; a node cannot): {type(e).__name__}: {first_line(e)}",
                    hint="measure on a real device (--device cpu or cuda), or make forward compute "
                         "without reading values") from e
            raise ProfileError(
                f"node {n.name} ({target_name(n)}) failed on {self.device}: "
                f"{type(e).__name__}: {first_line(e)}",
                hint="check that the model runs in training mode on this device and dtype") from e
        self.costs[n.name] = cost
        self.output_bytes[n.name] = tensor_bytes(out)
        self.progress.step(n.name)
        return out


def first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:300] if lines else ""
