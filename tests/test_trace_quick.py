"""Tests for autopipe/trace/_quick.py: the quicker torch.export gives the same graph."""

from __future__ import annotations

import contextlib
import sys

import pytest
import torch
from torch.fx import config as fx_config

import autopipe
from autopipe.errors import TraceError
from autopipe.trace import frontend
from autopipe.trace._quick import failures_unlogged, quick_export

from .conftest import example_spec
from .models import DataDependent


def _plain(monkeypatch: pytest.MonkeyPatch, spec: autopipe.ModelSpec) -> autopipe.Graph:
    with monkeypatch.context() as m:
        m.setattr(frontend, "quick_export", contextlib.nullcontext)
        m.setattr(frontend, "unguarded_module", lambda ep: ep.module())
        return autopipe.trace(spec.model, spec.example_inputs, spec.example_kwargs)


@pytest.mark.parametrize("name", ["llama", "gpt2", "bert"])
def test_same_graph_as_a_plain_export(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    spec = example_spec(name)
    quick = autopipe.trace(spec.model, spec.example_inputs, spec.example_kwargs)
    plain = _plain(monkeypatch, spec)
    assert quick.frontend == plain.frontend == "export"
    assert quick.nodes == plain.nodes
    assert quick.fingerprint == plain.fingerprint
    assert quick.gm.code == plain.gm.code
    # the quick one runs, and computes what the plain one does
    flat = quick.flat_inputs(spec.example_inputs, spec.example_kwargs)
    for a, b in zip(quick.gm(*flat), plain.gm(*flat)):
        torch.testing.assert_close(a, b)
    # only the stack traces are gone
    assert any(n.meta.get("stack_trace") for n in plain.gm.graph.nodes)
    assert not any(n.meta.get("stack_trace") for n in quick.gm.graph.nodes)


def test_switches_are_restored() -> None:
    before = fx_config.do_not_emit_stack_traces
    with quick_export():
        assert fx_config.do_not_emit_stack_traces
    assert fx_config.do_not_emit_stack_traces == before
    with pytest.raises(RuntimeError), quick_export():
        raise RuntimeError("inside")
    assert fx_config.do_not_emit_stack_traces == before


def test_a_failed_export_prints_no_partial_graph(capfd: pytest.CaptureFixture[str]) -> None:
    """torch.export printed the graph it had traced so far to stderr when it stopped on a
    data-dependent branch (58 kB of code, four times, for Switch Transformers' loop over the
    experts a batch hits) above autopipe's one-line error; other output still passes."""
    with pytest.raises(TraceError, match="cannot trace the model"):
        autopipe.trace(DataDependent(), (torch.randn(2, 4),))
    err = capfd.readouterr().err
    assert "def forward" not in err and "torch.ops.aten" not in err, err[:300]
    with failures_unlogged():
        print("kept", file=sys.stderr)
    assert capfd.readouterr().err == "kept\n"
