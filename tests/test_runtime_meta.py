"""Tests for autopipe/runtime/meta.py: stage input/output metadata without running the model."""

from __future__ import annotations

import torch

from autopipe.runtime.meta import stage_metas
from autopipe.runtime.split import split_graph

from .runtime_cases import Case


def test_metas_match_a_real_run() -> None:
    spec, graph, plan = Case("gpt2", 4).build()
    split = split_graph(graph, plan)
    flat = graph.flat_inputs(spec.example_inputs)
    metas = stage_metas(split, flat)
    values = tuple(flat)
    for st, meta in zip(split.stages, metas):
        assert [tuple(t.shape) for t in meta.inputs] == [tuple(v.shape) for v in values]
        values = tuple(v.detach().requires_grad_(v.requires_grad) for v in st.module(*values))
        assert [(tuple(t.shape), t.dtype, t.stride()) for t in meta.outputs] == \
               [(tuple(v.shape), v.dtype, v.stride()) for v in values]
        assert [t.requires_grad for t in meta.outputs] == [v.requires_grad for v in values]
        assert all(t.device.type == "meta" for t in meta.inputs + meta.outputs)
    # integer and boolean values cross cuts without gradients, activations with them
    sent = [t for m in metas[:-1] for t in m.outputs]
    assert any(not t.is_floating_point() for t in sent)
    assert all(t.requires_grad == t.is_floating_point() for t in sent if t.dim() == 3)


def test_metas_leave_batch_norm_state_alone() -> None:
    spec, graph, plan = Case("resnet", 2).build()
    split = split_graph(graph, plan)
    before = {k: v.clone() for k, v in graph.gm.named_buffers()}
    stage_metas(split, graph.flat_inputs(spec.example_inputs))
    for k, v in graph.gm.named_buffers():
        assert torch.equal(v, before[k]), k
