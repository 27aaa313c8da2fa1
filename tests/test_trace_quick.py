"""Tests for autopipe/trace/_quick.py: the quicker torch.export gives the same graph."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch.fx import config as fx_config

import autopipe
from autopipe.trace import frontend
from autopipe.trace._quick import quick_export

from .conftest import example_spec


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
