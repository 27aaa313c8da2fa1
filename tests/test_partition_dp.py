"""Tests for autopipe/partition/dp.py: exact min–max over chain partitions."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import HealthCheck, given, settings

from autopipe.partition.chain import Chain
from autopipe.partition.costs import evaluate, violations
from autopipe.partition.dp import min_bottleneck, min_memory
from tests.partition_cases import Case, cases


def _chain_partitions(n: int, p: int) -> list[list[int]]:
    out = []
    for cuts in itertools.combinations(range(1, n), p - 1):
        bounds = [0, *cuts, n]
        out.append([s for s in range(p) for _ in range(bounds[s + 1] - bounds[s])])
    return out


def _ratios(chain: Chain, stage_of: list[int]) -> list[float]:
    """Each stage's memory over its limit, as ``min_memory`` prices it."""
    out = []
    for s in range(max(stage_of) + 1):
        blocks = [b for b, t in enumerate(stage_of) if t == s]
        limit = chain.limit[s] if np.isfinite(chain.limit[s]) else 1.0
        out.append(float(chain.memory(s, blocks[-1] + 1, range(blocks[0], blocks[0] + 1))[0]) / limit)
    return out


def _bottleneck(case: Case, stage_of: list[int]) -> float:
    ev = evaluate(case.problem(), stage_of)
    links = [s.send_s for s in ev.stages[:-1]]
    return max([s.busy_s for s in ev.stages] + links)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(max_nodes=6))
def test_dp_is_exact_on_the_chain(case: Case) -> None:
    problem = case.problem()
    p = problem.config.num_stages
    valid = [s for s in _chain_partitions(problem.size, p)
             if not violations(problem, s) and evaluate(problem, s).fits]
    found = min_bottleneck(Chain(problem))
    if not valid:
        assert found is None
        return
    assert found is not None and found in valid
    best = min(_bottleneck(case, s) for s in valid)
    assert _bottleneck(case, found) <= best * (1 + 1e-9) + 1e-12
    ratio, split = min_memory(Chain(problem)) or (None, None)
    assert split is not None and not violations(problem, split)
    mem = evaluate(problem, split)
    assert ratio is not None and all(s.memory <= s.limit * ratio * (1 + 1e-9) + 1e-6
                                     for s in mem.stages if s.limit != float("inf"))
    # balanced: the same largest ratio, the least sum of squared ratios among the chain splits
    chain = Chain(problem)
    bal_ratio, bal = min_memory(chain, balanced=True) or (None, None)
    assert bal_ratio == ratio and bal is not None and not violations(problem, bal)
    squares = {tuple(s): _ratios(chain, s) for s in _chain_partitions(problem.size, p) if not violations(problem, s)}
    assert max(squares[tuple(bal)]) <= ratio * (1 + 1e-9)
    least = min(sum(r * r for r in rs) for rs in squares.values() if max(rs) <= ratio * (1 + 1e-9))
    assert sum(r * r for r in squares[tuple(bal)]) <= least * (1 + 1e-9) + 1e-12
