"""Switches that make ``torch.export`` cheaper (and quieter) without changing the graph it returns.

[Note: a quicker export]
On a Llama-2-70B shape (5,191 nodes) most of ``torch.export``'s time is not tracing:
each fx node records the Python stack that made it (a traceback walk per node), and
export's passes regenerate and ``compile()`` the Python code of the whole graph after
each one. Neither is needed here: autopipe never reads ``node.stack_trace``, and the
code of export's intermediate modules is never run (``ExportedProgram.module()`` builds
its own). So the trace turns stack traces off (``torch.fx.config``) and lets export's
intermediate GraphModules make their code lazily, only if run (torch's
``_LazyGraphModule``, what ``torch.compile`` uses for the same reason). And
``ExportedProgram.module()`` is asked not to generate the input-guard function (whose
call the trace erased anyway: shapes are checked elsewhere). All are torch's own
switches; where a torch version lacks one, tracing is just slower. Measured on this CPU
for the 70B shape: export 7.8 s → 4.9 s of CPU, ``module()`` 2.0 s → 1.2-1.5 s; the
graph is the same (tests/test_trace_quick.py compares node by node).
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
from collections.abc import Iterator
from typing import Any

import torch
import torch.fx


def unguarded_module(ep: torch.export.ExportedProgram) -> torch.nn.Module:
    """``ep.module()`` without the generated input-guard function, where torch can leave
    it out (``check_guards=False``; older torch has no such argument): the trace erases
    its call anyway."""
    try:
        return ep.module(check_guards=False)
    except TypeError:  # pragma: no cover - older torch
        return ep.module()


@contextlib.contextmanager
def quick_export() -> Iterator[None]:
    """Within this block, fx records no stack traces and export's GraphModules compile lazily."""
    with contextlib.ExitStack() as stack:
        fx_config: Any = getattr(torch.fx, "config", None)
        if hasattr(fx_config, "do_not_emit_stack_traces"):
            before = fx_config.do_not_emit_stack_traces
            fx_config.do_not_emit_stack_traces = True
            stack.callback(setattr, fx_config, "do_not_emit_stack_traces", before)
        try:
            from torch.fx._lazy_graph_module import _use_lazy_graph_module
        except ImportError:  # pragma: no cover - older or newer torch
            pass
        else:
            stack.enter_context(_use_lazy_graph_module(True))
        yield


_NOISY = ("torch._subclasses.fake_tensor",)
"""Loggers that print a whole traceback at ERROR level when an op fails on fake tensors,
before torch.export raises the same error (e.g. example inputs of the wrong shape)."""


@contextlib.contextmanager
def failures_unlogged() -> Iterator[None]:
    """Within this block, torch's fake-tensor logger keeps quiet and a failed export's
    partial graph is not printed: an export that fails raises, and the trace reports
    that error in one line.

    torch.export prints the graph it had traced so far to stderr (``print(e.partial_fx_graph,
    file=sys.stderr)`` in ``torch/export/_trace.py``) when it stops on a data-dependent
    branch, once per nested export call: a DBRX-like loop over the experts a batch hits
    (Switch Transformers) printed 58 kB of generated code, four times, above the one-line
    error (until 2026-12-07). What else the export writes to stderr is passed on after it.
    """
    loggers = [logging.getLogger(name) for name in _NOISY]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            yield
    except BaseException as e:
        graph = getattr(e, "partial_fx_graph", None)
        text = captured.getvalue()
        sys.stderr.write(text.replace(f"{graph}\n", "") if graph is not None else text)
        raise
    else:
        sys.stderr.write(captured.getvalue())
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
