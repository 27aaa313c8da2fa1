"""Coarsening: merge nodes into blocks, losslessly where the rules force it, then to a size target.

Two steps, both giving a Problem whose blocks are convex in the DAG:

1. ``merge_forced`` (lossless but for one rule): a value that is not a single tensor
   cannot be sent, so its producer shares a stage with every reader — and, by convexity,
   with every node on a path between them. Union the producer with its readers, then
   merge the strongly connected components of the block graph (a path that leaves a block
   and comes back into it is such a cycle). Whatever reads, directly or not, a value of
   the last stage's blocks (the output's) runs on the last stage too, so it joins them.
   The rule: a view of a parameter is never sent to a reader in its module ([Note: a
   parameter's view stays with its readers]).
2. ``coarsen`` (lossy, only above ``max_blocks``): merge neighbouring blocks of the
   topological chain, the pair with the least work first (ties: across the
   highest-traffic boundary), and inside one module (``transformer.h.3``, at the
   deepest module level with at most ``max_blocks`` parts) before across modules,
   until the target is met. A run of consecutive blocks in a topological order is
   convex, so every merged block is too.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import replace

import networkx as nx

from autopipe.errors import PlanError
from autopipe.partition.problem import Block, Problem, Value, merge_blocks


def regroup(problem: Problem, groups: Sequence[Sequence[int]]) -> Problem:
    """The Problem whose blocks are ``groups`` of ``problem``'s blocks.

    ``groups`` must partition the blocks, each group convex, and be listed in a
    topological order of the groups.
    """
    group_of = [-1] * problem.size
    for g, members in enumerate(groups):
        for i in members:
            group_of[i] = g
    assert min(group_of) >= 0, "groups must cover every block"
    blocks: list[Block] = []
    for members in groups:
        merged = merge_blocks([problem.blocks[i] for i in sorted(members)])
        if merged.pin == "first" and any(problem.blocks[i].pin == "last" for i in members) \
                and problem.config.num_stages > 1:
            raise PlanError(
                "the model's output reaches its inputs only through non-tensor values, so "
                "the model cannot be cut", hint="use one stage, or make the values tensors")
        blocks.append(merged)
    values: list[Value] = []
    for v in problem.values:
        src = group_of[v.src]
        dsts = tuple(sorted({group_of[d] for d in v.dsts} - {src}))
        if dsts:
            values.append(replace(v, src=src, dsts=dsts,
                                  joined=tuple(sorted({group_of[d] for d in v.joined} - {src}))))
    return replace(problem, blocks=tuple(blocks), values=tuple(values))


def merge_forced(problem: Problem) -> Problem:
    """Merge every non-tensor value's producer with its readers and make the blocks convex.

    Lossless: every valid partition of ``problem`` is a valid partition of the result,
    but for those that send a parameter's view inside its module ([Note: a parameter's
    view stays with its readers]).
    """
    parent = list(range(problem.size))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    merged_any = False

    def union(a: int, b: int) -> None:
        nonlocal merged_any
        a, b = find(a), find(b)
        if a != b:
            parent[max(a, b)] = min(a, b)
            merged_any = True

    for v in problem.values:
        if not v.is_tensor:
            for d in v.dsts:
                union(v.src, d)
        for d in v.joined:  # [Note: a parameter's view stays with its readers]
            union(v.src, d)
    last = [i for i, b in enumerate(problem.blocks) if b.pin == "last"]
    if last:
        readers: dict[int, list[int]] = {}
        for a, b in problem.edges():
            readers.setdefault(a, []).append(b)
        for i in last[1:]:
            union(last[0], i)
        # the last stage's descendants, to a fixpoint: a descendant's non-tensor partners
        # joined it above, and their descendants must follow
        while True:
            group = [i for i in range(problem.size) if find(i) == find(last[0])]
            after = {d for i in group for d in readers.get(i, ())} - set(group)
            if not after:
                break
            for d in after:
                union(last[0], d)
    if not merged_any:
        return problem
    quotient = nx.DiGraph()
    quotient.add_nodes_from({find(i) for i in range(problem.size)})
    for a, b in problem.edges():
        if find(a) != find(b):
            quotient.add_edge(find(a), find(b))
    cond = nx.condensation(quotient)
    members: dict[int, list[int]] = {}
    for i in range(problem.size):
        members.setdefault(cond.graph["mapping"][find(i)], []).append(i)
    order = list(nx.lexicographical_topological_sort(cond, key=lambda c: min(members[c])))
    return regroup(problem, [sorted(members[c]) for c in order])


# [Note: a parameter's view stays with its readers]
#
# A view of a parameter (``Value.param_view``: Qwen2-MoE's experts hand
# ``gate_up_proj.transpose(1, 2)`` to ``_grouped_mm``) costs nothing where it is made and
# read, but sent across a cut it is a copy of the weight each micro-batch, and its
# gradient one coming back: 2.19 GiB each way at the Qwen2-57B-A14B shape, where the chain
# DP cut between the two and its split ran 11% slower than the parameter-balanced one. So
# the view joins its readers in ``merge_forced``, as a value that cannot be sent does:
# those whose node lies in the very module whose node makes it (``Value.joined``, decided
# node by node in ``from_profile``, carried through ``regroup``). Not a reader in another
# module, nor in one it holds: a view a decoder makes and each of its layers reads would
# pull every layer into one block, and T5Gemma 2's encoder embedding hands its weight's
# dtype cast (an alias) to the decoder's embedding too. Deciding it on whole blocks instead
# merged a layer-granular T5Gemma 2 (its units hold nodes of enclosing modules) into fewer
# units: its 4-stage plan ran 43% slower (126.6 against 88.6 ms).


def _key(problem: Problem, block: Block, depth: int) -> str:
    for n in block.nodes:
        module = problem.node_module.get(n, "")
        if module:
            return ".".join(module.split(".")[:depth])
    return ""


def _runs(problem: Problem, depth: int) -> list[list[int]]:
    """Maximal runs of neighbouring blocks that share the module prefix of ``depth`` parts."""
    runs: list[list[int]] = []
    last = None
    for i, b in enumerate(problem.blocks):
        key = None if b.pin else _key(problem, b, depth)
        if runs and key is not None and key == last:
            runs[-1].append(i)
        else:
            runs.append([i])
        last = key
    return runs


def coarsen(problem: Problem, max_blocks: int) -> Problem:
    """At most ``max_blocks`` blocks (more only where pinned blocks need their own).

    Lossy: the partitioners then only cut between the returned blocks.
    """
    if problem.size <= max_blocks:
        return problem
    depth_max = max((len(m.split(".")) for m in problem.node_module.values() if m), default=0)
    # the deepest module level whose runs still fit the target: its boundaries are kept longest
    depth, most = 0, 0
    for d in range(depth_max + 1):
        count = len(_runs(problem, d))
        if most < count <= max_blocks:
            depth, most = d, count
    keys = [f"#{i}" if b.pin else _key(problem, b, depth) for i, b in enumerate(problem.blocks)]
    runs = _merge_lightest(problem, [[i] for i in range(problem.size)], keys, max_blocks)
    return regroup(problem, runs)


def _merge_lightest(problem: Problem, runs: list[list[int]], keys: list[str],
                    target: int) -> list[list[int]]:
    """Merge neighbouring runs until ``target`` remain: first within one module (``keys``),
    then across; the pair with the least work first, ties across the most traffic."""
    if len(runs) <= target:
        return runs
    work = [sum(problem.blocks[i].work_s for i in r) for r in runs]
    pinned = [any(problem.blocks[i].pin for i in r) for r in runs]
    key = list(keys)
    first_of = {}
    for k, r in enumerate(runs):
        for i in r:
            first_of[i] = k
    # traffic across the boundary in front of run k (between run k-1 and run k)
    traffic = [0] * (len(runs) + 1)
    for v in problem.values:
        lo, hi = first_of[v.src], max(first_of[d] for d in v.dsts)
        for k in range(lo + 1, hi + 1):
            traffic[k] += v.bytes
    nxt = list(range(1, len(runs) + 1))
    prv = list(range(-1, len(runs) - 1))
    alive = [True] * len(runs)
    heap: list[tuple[bool, float, int, int, int]] = []

    def push(k: int) -> None:
        j = nxt[k]
        if j < len(runs) and not pinned[k] and not pinned[j]:
            heapq.heappush(heap, (key[k] != key[j], work[k] + work[j], -traffic[j], k, j))

    for k in range(len(runs)):
        push(k)
    count = len(runs)
    while count > target and heap:
        across, w, _, k, j = heapq.heappop(heap)
        if not (alive[k] and alive[j] and nxt[k] == j and w == work[k] + work[j]
                and across == (key[k] != key[j])):
            continue
        runs[k] = runs[k] + runs[j]
        work[k] = w
        if across:
            key[k] = f"{key[k]}+{key[j]}"
        alive[j] = False
        nxt[k] = nxt[j]
        if nxt[j] < len(runs):
            prv[nxt[j]] = k
        count -= 1
        push(k)
        if prv[k] >= 0:
            push(prv[k])
    return [r for k, r in enumerate(runs) if alive[k]]
