"""Tests for autopipe/runtime/tied.py: which parameters are replicated, under which names."""

from __future__ import annotations

from autopipe.runtime.split import split_graph
from autopipe.runtime.tied import canonical_names, replicated, stage_params

from .runtime_cases import Case


def test_replicated_parameters_of_gpt2() -> None:
    _spec, graph, plan = Case("gpt2", 4).build()
    split = split_graph(graph, plan)
    canonical = canonical_names(graph)
    holders: dict[str, list[int]] = {}
    for st in split.stages:
        for name in stage_params(st.module, canonical):
            holders.setdefault(name, []).append(st.index)
    # the tied embedding / vocabulary head lives in the first and the last stage, nothing else is shared
    assert replicated(holders) == {"transformer.wte.weight": (0, 3)}
    # one name per parameter even where a stage reads it under both names
    assert all(len(set(v)) == len(v) for v in holders.values())


def test_replicated_ignores_single_holders() -> None:
    assert replicated({"a": [0, 0], "b": [1, 0, 1], "c": [2]}) == {"b": (0, 1)}
