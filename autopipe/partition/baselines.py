"""What other systems would do: uniform layer split (Megatron-LM, torchtitan) and
parameter-balanced split (DeepSpeed's default ``partition_method="parameters"``).

Both work on *layers*: the elements of the model's main repeated module list
(``transformer.h.3``, ``model.layers.17``), found as the ``X.<i>`` list whose
elements hold the most work. Blocks before the first layer (embeddings) go with
the first layer, blocks after a layer (glue, final norm, head) with that layer.
With fewer layers than stages, the lists at the same depth are pooled (a U-Net's
encoder, up and decoder lists), and failing that every computing block is a layer.

    uniform: layers  L0 L1 L2 L3 L4 L5 L6 L7 L8 L9   (p = 4: 3,3,2,2 layers)
             stage   0  0  0  1  1  1  2  2  3  3
    params:  contiguous layer groups with the smallest largest parameter total
"""

from __future__ import annotations

import numpy as np

from autopipe.partition.problem import Problem


def _layer_lists(problem: Problem) -> dict[str, dict[int, float]]:
    """``X`` → {index → work} for every module list ``X.<i>`` seen in the blocks."""
    lists: dict[str, dict[int, float]] = {}
    for b in problem.blocks:
        if not b.real:
            continue
        module = problem.node_module.get(b.nodes[0], "")
        parts = module.split(".") if module else []
        for k in range(1, len(parts)):
            if parts[k].isdigit():
                items = lists.setdefault(".".join(parts[:k]), {})
                items[int(parts[k])] = items.get(int(parts[k]), 0.0) + b.work_s
    return lists


def _layer_of(module: str, lists: list[str]) -> tuple[str, int] | None:
    for prefix in lists:
        if module.startswith(prefix + "."):
            head = module[len(prefix) + 1:].split(".", 1)[0]
            if head.isdigit():
                return prefix, int(head)
    return None


def layers(problem: Problem) -> list[int]:
    """Block → layer index (0 … L−1), in chain order; see the module docstring."""
    p = problem.config.num_stages
    lists = _layer_lists(problem)
    chosen: list[str] = []
    if lists:
        main = max(sorted(lists), key=lambda x: (sum(lists[x].values()), -x.count(".")))
        chosen = [main]
        if len(lists[main]) < p:
            depth = main.count(".")
            chosen = [x for x in sorted(lists) if x.count(".") == depth]
    out: list[int] = []
    current = -1
    seen: dict[tuple[str, int], int] = {}
    for b in problem.blocks:
        module = problem.node_module.get(b.nodes[0], "") if b.real else ""
        key = _layer_of(module, chosen) if chosen else None
        if key is not None and key not in seen:
            seen[key] = len(seen)
        if key is not None:
            current = max(current, seen[key])
        out.append(max(current, 0))
    if len(seen) < p:
        # no usable layer list: every computing block is a layer
        out, current = [], -1
        for b in problem.blocks:
            if b.real and b.pin != "last":  # the loss is no layer
                current += 1
            out.append(max(current, 0))
    return out


def _valid(problem: Problem, stage_of: list[int]) -> list[int] | None:
    """Monotone fix-up: pinned blocks where they must be; None if a stage ends up empty."""
    p = problem.config.num_stages
    fixed = []
    for i, b in enumerate(problem.blocks):
        s = stage_of[i]
        if b.pin == "first":
            s = 0
        elif b.pin == "last":
            s = p - 1
        fixed.append(s)
    real = [0] * p
    for i, b in enumerate(problem.blocks):
        real[fixed[i]] += b.real
    return fixed if all(real) else None


def uniform(problem: Problem) -> list[int] | None:
    """Block → stage of the uniform layer split (None if there are fewer layers than stages)."""
    p = problem.config.num_stages
    layer = layers(problem)
    count = max(layer) + 1
    if count < p:
        return None
    sizes = [count // p + (1 if k < count % p else 0) for k in range(p)]
    stage_of_layer = [k for k, size in enumerate(sizes) for _ in range(size)]
    return _valid(problem, [stage_of_layer[x] for x in layer])


def params(problem: Problem) -> list[int] | None:
    """Block → stage of the parameter-balanced split: contiguous layers, the smallest
    largest per-stage parameter total (None if there are fewer layers than stages)."""
    p = problem.config.num_stages
    layer = layers(problem)
    count = max(layer) + 1
    if count < p:
        return None
    held: list[set[str]] = [set() for _ in range(count)]
    for i, b in enumerate(problem.blocks):
        held[layer[i]].update(b.params)
    weight = np.array([float(sum(problem.param_bytes[q] for q in h)) for h in held])
    prefix = np.concatenate([[0.0], np.cumsum(weight)])
    # best[s, i]: smallest bottleneck for layers [0, i) in s+1 groups
    best = np.full((p, count + 1), np.inf)
    arg = np.zeros((p, count + 1), dtype=np.int64)
    best[0, 1:] = prefix[1:]
    for s in range(1, p):
        for i in range(s + 1, count + 1):
            js = np.arange(s, i)
            cand = np.maximum(best[s - 1, js], prefix[i] - prefix[js])
            k = int(np.argmin(cand))
            best[s, i], arg[s, i] = cand[k], js[k]
    ends = [count]
    for s in range(p - 1, 0, -1):
        ends.append(int(arg[s, ends[-1]]))
    ends = ends[::-1]
    stage_of_layer = []
    start = 0
    for s, end in enumerate(ends):
        stage_of_layer += [s] * (end - start)
        start = end
    return _valid(problem, [stage_of_layer[x] for x in layer])
