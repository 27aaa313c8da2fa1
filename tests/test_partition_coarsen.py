"""Tests for autopipe/partition/coarsen.py: forced merges are lossless, coarse blocks convex."""

from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings

from autopipe.partition import brute
from autopipe.partition.coarsen import coarsen, merge_forced
from autopipe.partition.costs import evaluate, violations
from autopipe.partition.problem import Config, Problem, from_profile
from autopipe.partition.synthetic import synthetic_profile
from autopipe.plan_format import Device
from tests.partition_cases import Case, cases


def _blocks_convex(fine: Problem, coarse: Problem) -> None:
    block_of = {n: i for i, b in enumerate(coarse.blocks) for n in b.nodes}
    assert sorted(block_of) == sorted(n for b in fine.blocks for n in b.nodes)
    for v in fine.values:
        src = block_of[fine.blocks[v.src].nodes[0]]
        for d in v.dsts:
            dst = block_of[fine.blocks[d].nodes[0]]
            assert src <= dst, "the coarse blocks are not in a topological order"
            if not v.is_tensor:
                assert src == dst, "a non-tensor value crosses coarse blocks"


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(max_nodes=5, max_stages=2))
def test_forced_merges_lose_nothing(case: Case) -> None:
    fine = from_profile(case.profile, case.config, optimizer=case.optimizer)
    merged = merge_forced(fine)
    _blocks_convex(fine, merged)
    # every valid partition of the nodes is one of the merged blocks, and vice versa
    by_node = [{n: s for b, s in zip(fine.blocks, part) for n in b.nodes}
               for part in brute.partitions(fine)]
    merged_parts = [{n: s for b, s in zip(merged.blocks, part) for n in b.nodes}
                    for part in brute.partitions(merged)]
    assert sorted(map(sorted, (d.items() for d in by_node))) == \
        sorted(map(sorted, (d.items() for d in merged_parts)))
    for part in brute.partitions(merged):
        fine_part = [part[next(i for i, b in enumerate(merged.blocks) if fb.nodes[0] in b.nodes)]
                     for fb in fine.blocks]
        assert not violations(fine, fine_part)
        assert math.isclose(evaluate(fine, fine_part).objective_s, evaluate(merged, part).objective_s,
                            rel_tol=1e-9, abs_tol=1e-12)


def test_coarsen_to_target_along_modules() -> None:
    prof = synthetic_profile(600, seed=1, layer_size=20, nontensor_prob=0.05)
    cfg = Config(num_stages=4, microbatches=8, schedule="1f1b",
                 devices=tuple(Device(name=f"d{i}", memory=0) for i in range(4)), link_bandwidth=25e9)
    fine = merge_forced(from_profile(prof, cfg))
    coarse = coarsen(fine, 50)
    assert coarse.size <= 50
    _blocks_convex(fine, coarse)
    # 30 modules layers.k of 20 nodes: at 50 blocks no module is split
    modules = [{fine.node_module[n] for n in b.nodes if fine.node_module[n]} for b in coarse.blocks]
    assert sum(len(m) > 1 for m in modules) < sum(len(m) == 1 for m in modules)
    assert coarsen(fine, 10**6) is fine
