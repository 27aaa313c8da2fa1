"""Layer granularity: cut only between a model's repeated blocks (``transformer.h.3``).

torchtitan, DeepSpeed and Megatron-LM build a pipeline stage from whole layers. With
``granularity="layer"`` (or ``cut_at=PATTERN``) the planner solves a Problem whose
blocks are *units*: what runs before the first layer (embeddings, rotary tables), each
layer, what runs after the last (final norm, head, loss). Every partition of it is one
those engines can express, and the partitioners solve it unchanged.

    node order   in emb pos | h.0 ... | h.1 ... | h.2 ... | ln_f head out
    unit         0          | 1       | 2       | 3       | 4
    a cut may fall between two blocks only where every node before it belongs to an
    earlier unit than every node after it (then each group is a run of a topological
    order, hence convex)

A node belongs to the layer of the shortest prefix of its module path that matches
the pattern; nodes before the first layer node to unit 0, after the last to the last
unit; others (glue between layers) to the unit of the node before them. The input
placeholders pin unit 0 to the first stage and the output pins the last unit to the
last stage, as Megatron-LM's ``E…|…|…L`` layouts require.
"""

from __future__ import annotations

import fnmatch
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from autopipe.errors import PlanError
from autopipe.partition.assemble import owned_modules
from autopipe.partition.coarsen import merge_forced, regroup
from autopipe.partition.param_reads import param_reads
from autopipe.partition.problem import Problem
from autopipe.plan_format import Baseline, Plan
from autopipe.profile.profile import Profile

GRANULARITIES = ("node", "layer")
_REGEX_CHARS = set("^$()|+\\{}")
_HINT = ("name finer layers with --cut-at PATTERN; a plan without --granularity layer cuts "
         "anywhere, which autopipe train runs but autopipe export refuses")


@dataclass(frozen=True, slots=True, kw_only=True)
class Layers:
    """How a model's nodes fall into units (the blocks of a layer-granular Problem)."""

    pattern: str
    """The module pattern the layers match (``transformer.h.*``)."""
    auto: bool
    """True when the pattern was found, not given."""
    node_unit: dict[str, int]
    """Node name → unit: 0 before the layers, 1…L the layers, L+1 after them."""
    units: tuple[tuple[str, ...], ...]
    """Per unit, the outermost modules whose nodes all lie in it (layers by their path)."""
    lists: tuple[str, ...]
    """The module lists the layers belong to, in the order they first run (``model.layers``)."""
    uncut: tuple[tuple[str, int], ...] = ()
    """Other stacks of blocks (path, blocks), outside the layers cut between: an encoder's
    layers where only the decoder's are (``--cut-at``), a stack of one layer beside the list
    found ([Note: which lists are uncut stacks]); they run inside the units before or after
    the layers, which Megatron-LM's layout cannot say."""
    alike: bool
    """True when the layers are the numbered children of ``lists`` (all of them), each list's
    built alike (``_repeats``, or one child): one stack of transformer layers per list, as
    Megatron-LM counts them. False for a ``cut_at`` over unlike modules (``transformer.*``:
    the embeddings, the whole block list, the final norm), over some blocks of a list only
    (``transformer.h.1``: the others lie in the units around it), or over a ``Sequential``
    of different modules."""
    runs: tuple[int, ...] = ()
    """The layers (units 1…L) in the order their runs start, where the model runs one several
    times (ALBERT's one shared layer group, once per hidden layer: ``(1, 1)``); empty where
    every layer runs once, in order (``_runs``)."""


def check_granularity(granularity: str | None, cut_at: str | None) -> None:
    """Raise PlanError for an unknown granularity, or for ``node`` with a ``cut_at``: ``node``
    cuts anywhere, ``cut_at`` only between the modules it matches. None is ``layer`` where
    ``cut_at`` is given, else ``node``."""
    if granularity is not None and granularity not in GRANULARITIES:
        raise PlanError(f"unknown granularity {granularity!r}",
                        hint=f"choose one of {', '.join(GRANULARITIES)}")
    if granularity == "node" and cut_at is not None:
        raise PlanError(f"granularity='node' cuts anywhere, but cut_at={cut_at!r} cuts only "
                        f"between the modules it matches",
                        hint="drop one: cut_at alone (it implies granularity='layer'), or "
                             "granularity='node' alone")


def repeated_lists(problem: Problem) -> list[tuple[str, int, float]]:
    """Module lists ``X`` whose children ``X.0, X.1, …`` run nodes, as (X, children, work
    seconds), the heaviest first (then the longest, the shallowest)."""
    items: dict[str, set[int]] = {}
    work: dict[str, float] = {}
    for b in problem.blocks:
        share = b.work_s / len(b.nodes)
        for n in b.nodes:
            module = problem.node_module.get(n, "")
            parts = module.split(".") if module else []
            for k, part in enumerate(parts):
                if part.isdigit():
                    x = ".".join(parts[:k])
                    items.setdefault(x, set()).add(int(part))
                    work[x] = work.get(x, 0.0) + share
    found = [(x, len(items[x]), work[x]) for x in items if len(items[x]) >= 2]
    return sorted(found, key=lambda f: (-f[2], -f[1], f[0].count("."), f[0]))


def single_lists(problem: Problem) -> list[str]:
    """Module lists ``X`` of one block: ``X.0`` runs nodes of modules inside it
    (``X.0.mlp``), no other child of ``X`` runs nodes, and no numbered module encloses
    ``X``; in the order they first run ([Note: stacks of one layer] in ``auto_lists``)."""
    children: dict[str, set[str]] = {}
    nested: set[str] = set()
    for n in problem.node_order:
        module = problem.node_module.get(n, "")
        parts = module.split(".") if module else []
        k = next((k for k, part in enumerate(parts) if part.isdigit()), None)
        if k is not None:
            x = ".".join(parts[:k])
            children.setdefault(x, set()).add(parts[k])
            if k + 1 < len(parts):
                nested.add(x)
    return [x for x, c in children.items() if c == {"0"} and x in nested]


def _glob(x: str) -> str:
    return f"{x}.*" if x else "*"


def _nested(x: str, y: str) -> bool:
    """Whether module paths ``x`` and ``y`` are the same or one lies inside the other."""
    return x == y or not x or not y or x.startswith(y + ".") or y.startswith(x + ".")


def _child_calls(problem: Problem, x: str) -> dict[str, tuple[tuple[str, str], ...]]:
    """Numbered child of module list ``x`` that runs nodes (``"3"``), in order → the calls it
    runs (the path within the child, ``node_call``)."""
    prefix = f"{x}." if x else ""
    calls: dict[str, list[tuple[str, str]]] = {}
    for n in problem.node_order:
        module = problem.node_module.get(n, "")
        if module.startswith(prefix):
            child, _, inner = module[len(prefix):].partition(".")
            if child.isdigit():
                calls.setdefault(child, []).append((inner, problem.node_call.get(n, "")))
    return {child: tuple(c) for child, c in calls.items()}


def _repeats(problem: Problem, x: str) -> bool:
    """Whether module list ``x`` is a stack of layers built alike: its children but the
    first run the same calls in the same order (the first may differ: T5's first block
    holds the relative position bias), the first too where there are only two, or those
    and more (``_within``: the bias again). A
    ``Sequential`` of different modules (a conv, a norm, an activation) is numbered too."""
    seen = list(_child_calls(problem, x).values())
    return len(seen) >= 2 and len(set(seen[1:])) == 1 and (len(seen) > 2 or _within(seen[1], seen[0]))


def _within(calls: tuple[tuple[str, str], ...], first: tuple[tuple[str, str], ...]) -> bool:
    """Whether ``calls`` run in ``first`` in the same order, ``first`` running some more:
    the first of two layers built alike, where it makes what the second is given (T5's
    relative position bias). A stack of two T5 blocks was no stack, for its first runs
    the bias's embedding, and ``--granularity layer`` kept a two-layer encoder whole."""
    it = iter(first)
    return bool(calls) and all(c in it for c in calls)


def _alike(problem: Problem, paths: list[str], lists: tuple[str, ...]) -> bool:
    """Whether the layers ``paths`` are numbered children of ``lists`` (``X.3``), all of each
    list's children that run nodes, and each list a stack built alike (``_repeats``) or of
    one child (``Layers.alike``)."""
    if not all(x.rpartition(".")[2].isdigit() for x in paths):
        return False
    for x in lists:
        children = _child_calls(problem, x)
        mine = {p.rpartition(".")[2] for p in paths if p.rpartition(".")[0] == x}
        if set(children) != mine or (len(children) >= 2 and not _repeats(problem, x)):
            return False
    return True


def auto_pattern(problem: Problem, lists: list[str]) -> str:
    """The layers ``--granularity layer`` cuts between, as a pattern (``auto_lists``)."""
    return _pattern(problem, auto_lists(problem, lists))


def auto_lists(problem: Problem, lists: list[str]) -> list[str]:
    """The module lists ``--granularity layer`` cuts between, given the repeated module lists
    (``repeated_lists``, heaviest first): the heaviest, and every other list that lies
    neither inside a chosen one nor around it; then the stacks of one layer
    (``single_lists``) that count beside them ([Note: stacks of one layer]).

    [Note: every stack of an encoder-decoder]
    An encoder-decoder has two stacks (BART's ``model.encoder.layers`` and
    ``model.decoder.layers``, T5's ``encoder.block`` and ``decoder.block``); cutting
    between the heavier stack's layers only would keep the other whole on one stage. Each
    stack's layers are units of their own, in the order they run; a list nested in a
    layer (Mixtral's experts, a ResNet stage's blocks) is inside a unit already. Beyond
    the heaviest, a list counts only where its children run the same calls in the same
    order (``_repeats``): a ``Sequential`` stem of a conv, a norm and an activation is
    numbered too, but no stack of layers. One
    list gives the glob ``X.*``, several a regular expression (``(?:X|Y)\\.\\d+``), both
    in the plan's ``options["granularity"]["pattern"]``.

    [Note: the parts of a lone layer]
    A stack of one layer is no repeated list (``X.0`` alone), but the layer's own parts
    may be numbered: a T5 block holds ``layer.0`` self-attention, ``layer.1``
    cross-attention, ``layer.2`` the MLP. Taken as the layers, a T5 of one block per stack
    was cut between a block's sublayers, which no engine can express, and exported to
    Megatron-LM as three layers. A list that lies in the only child of a list and whose
    children are not built alike (``_repeats``) stands for that enclosing list: the stack
    (``decoder.block``), its one layer a unit. A list built alike stays (a single Swin
    stage's blocks are the layers).

    [Note: stacks of one layer]
    A Whisper or BART of one encoder and one decoder layer has no list of two blocks
    (``model.encoder.layers.0`` alone), and ``--granularity layer`` found no layers, while
    a node-granular plan of it could not be exported (the export sent the user back to
    ``--granularity layer``, until 2026-12-07). A list whose only child ``X.0`` is a block
    (it holds modules of its own, unlike a ``Sequential`` of one ``Linear``), outside
    every numbered child, is a stack of one layer. It counts where no list of repeated
    blocks is found, and beside those found where it bears the name of one
    (``decoder.layers`` of one layer beside ``encoder.layers`` of six); a list of one
    elsewhere (a one-block ``head.0``) stays inside the units around the layers.
    """
    chosen: list[str] = []
    for x in lists:
        outer = _enclosing_list(x)
        # [Note: the parts of a lone layer]
        lone = outer is not None and outer not in lists and not _repeats(problem, x)
        x = outer if lone and outer is not None else x
        if not any(_nested(x, y) for y in chosen) and (not chosen or lone or _repeats(problem, x)):
            chosen.append(x)
    # [Note: stacks of one layer]
    names = {x.rpartition(".")[2] for x in chosen}
    chosen += [x for x in single_lists(problem) if not any(_nested(x, y) for y in chosen)
               and (not names or x.rpartition(".")[2] in names)]
    return chosen


def _pattern(problem: Problem, chosen: list[str]) -> str:
    """The layers of the module lists ``chosen`` as a pattern: one list gives the glob
    ``X.*``, several a regular expression (``(?:X|Y)\\.\\d+``) in the order they first run."""
    if len(chosen) == 1:
        return _glob(chosen[0])
    first: dict[str, int] = {}
    for n in problem.node_order:
        module = problem.node_module.get(n, "")
        for x in chosen:
            if x not in first and module.startswith(x + "."):
                first[x] = len(first)
    chosen.sort(key=lambda x: first.get(x, len(first)))
    return "(?:" + "|".join(re.escape(x) for x in chosen) + r")\.\d+"


def _enclosing_list(x: str) -> str | None:
    """The innermost module list that ``x`` lies in a numbered child of (``a.block`` for
    ``a.block.0.layer``); None where there is none."""
    parts = x.split(".")
    for k in range(len(parts) - 1, 0, -1):
        if parts[k].isdigit():
            return ".".join(parts[:k])
    return None


def _candidates(problem: Problem) -> str:
    found = repeated_lists(problem)
    if found:
        return "repeated blocks here: " + ", ".join(f"{_glob(x)} ({n})" for x, n, _ in found[:5])
    modules = {m for m in problem.node_module.values() if m}
    depth, tops = 1, sorted({m.split(".")[0] for m in modules})
    # through wrappers of one child (a Hugging Face model's `model`): where the modules part
    while len(tops) == 1 and any(m.count(".") >= depth for m in modules):
        depth += 1
        tops = sorted({".".join(m.split(".")[:depth]) for m in modules})
    return ("top-level modules here: " if depth == 1 else "modules here: ") + ", ".join(tops[:10])


def matcher(pattern: str) -> Callable[[str], bool]:
    """``pattern`` as a predicate on module paths: a glob (``model.layers.*``), or a regular
    expression (full match) when it holds any of ``^$()|+\\{}``.

    Raises:
        PlanError: an invalid regular expression.
    """
    if not _REGEX_CHARS.intersection(pattern):
        return lambda m: fnmatch.fnmatchcase(m, pattern)
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise PlanError(f"--cut-at {pattern!r} is not a valid regular expression ({e})",
                        hint="write a glob such as 'model.layers.*', or a valid regex") from None
    return lambda m: rx.fullmatch(m) is not None


def _layer_paths(problem: Problem, match: Callable[[str], bool]) -> dict[str, str]:
    """Module path → the layer it lies in (its shortest matching prefix), for paths in one."""
    out: dict[str, str] = {}
    for module in dict.fromkeys(problem.node_module.values()):
        parts = module.split(".") if module else []
        for k in range(1, len(parts) + 1):
            prefix = ".".join(parts[:k])
            if match(prefix):
                out[module] = prefix
                break
    return out


def _node_units(problem: Problem, layer_of: dict[str, str]) -> tuple[dict[str, int], list[str]]:
    """Node → unit (see the module docstring) and the layer paths in order."""
    names = problem.node_order
    layer = [layer_of.get(problem.node_module.get(n, "")) for n in names]
    paths = list(dict.fromkeys(x for x in layer if x is not None))
    index = {x: i + 1 for i, x in enumerate(paths)}
    inside = [i for i, x in enumerate(layer) if x is not None]
    first, last = inside[0], inside[-1]
    unit: dict[str, int] = {}
    current = 0
    for i, n in enumerate(names):
        x = layer[i]
        current = index[x] if x is not None else 0 if i < first else len(paths) + 1 if i > last \
            else current
        unit[n] = current
    return unit, paths


def node_layers(problem: Problem, pattern: str | None = None) -> dict[str, int]:
    """Node → its layer for ``full`` recomputation's regions (``Problem.node_layer``; [Note:
    a region per layer] in ``autopipe.partition.costs``): the units of the layers that
    ``pattern`` matches, or that ``--granularity layer`` would find (``auto_lists``). Empty
    where there are none, or where no layer holds a module of its own (a ``Sequential``
    of a ``Linear`` and an activation: a region per layer would keep what each saves)."""
    if pattern is None:
        chosen = auto_lists(problem, [x for x, _, _ in repeated_lists(problem)])
        if not chosen:
            return {}
        pattern = _pattern(problem, chosen)
    layer_of = _layer_paths(problem, matcher(pattern))
    if all(module == layer for module, layer in layer_of.items()):
        return {}
    return _node_units(problem, layer_of)[0]


def restrict(problem: Problem, cut_at: str | None) -> tuple[Problem, Layers]:
    """``problem`` with cuts only between units; ``cut_at`` None finds the layers itself.

    Lossless on top of the restriction: every partition of the result is one of
    ``problem``'s (non-tensor values are merged as ``merge_forced`` does).

    Raises:
        PlanError: no repeated layers, a pattern that matches no module, more stages
            than the units allow.
    """
    auto = cut_at is None
    found = repeated_lists(problem)
    if cut_at is None:
        chosen = auto_lists(problem, [x for x, _, _ in found])
        if not chosen:
            raise PlanError("--granularity layer found no repeated layers (no module list "
                            "X.0, X.1, … runs nodes, nor X.0 alone holding a block)",
                            hint=f"name the blocks to cut between with --cut-at PATTERN "
                                 f"({_candidates(problem)}); a plan without --granularity layer "
                                 f"cuts anywhere, which autopipe train runs but autopipe export "
                                 f"refuses")
        cut_at = _pattern(problem, chosen)
    layer_of = _layer_paths(problem, matcher(cut_at))
    if not layer_of:
        raise PlanError(f"--cut-at {cut_at!r} matches no module of the model",
                        hint=f"{_candidates(problem)}; patterns are globs over module paths, "
                             f"or regular expressions")
    node_unit, paths = _node_units(problem, layer_of)
    lo = [min(node_unit[n] for n in b.nodes) for b in problem.blocks]
    hi = [max(node_unit[n] for n in b.nodes) for b in problem.blocks]
    behind = lo[:]  # behind[i]: the least unit of blocks i, i+1, …
    for i in range(problem.size - 2, -1, -1):
        behind[i] = min(behind[i], behind[i + 1])
    groups: list[list[int]] = [[]]
    ahead = -1
    for i in range(problem.size):
        if groups[-1] and ahead < behind[i]:
            groups.append([])
        groups[-1].append(i)
        ahead = max(ahead, hi[i])
    groups = _in_order(problem, groups)
    units = len(paths) + 2
    split = frozenset(x.rsplit(".", k)[0] for x in paths for k in range(1, x.count(".") + 1))
    modules = owned_modules(problem, node_unit, groups=units, split=split)
    lists = tuple(dict.fromkeys(x.rsplit(".", 1)[0] if "." in x else "" for x in paths))
    layers = Layers(pattern=cut_at, auto=auto, node_unit=node_unit,
                    units=tuple(tuple(m) for m in modules), lists=lists,
                    uncut=_uncut(problem, found, paths, lists), alike=_alike(problem, paths, lists),
                    runs=_runs(problem, paths))
    out = merge_forced(regroup(problem, groups))
    p = problem.config.num_stages
    if out.num_real < p:
        what = "found" if auto else "matched by"
        raise PlanError(
            f"cannot cut the model into {p} stages at layer boundaries: the {len(paths)} "
            f"layer{'s' * (len(paths) != 1)} {what} {cut_at} leave{'s' * (len(paths) == 1)} "
            f"{out.num_real} pieces that can be separated "
            f"(with what runs before and after them)",
            hint=f"use at most {out.num_real} stages, or {_HINT}")
    return out, layers


def _uncut(problem: Problem, found: list[tuple[str, int, float]], paths: list[str],
           lists: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    """Of the stacks of blocks, those not cut between and outside the layers
    (``Layers.uncut``): not one of ``lists``, not inside a layer of ``paths`` (a layer's
    experts), not enclosing one.

    [Note: which lists are uncut stacks]
    A stack is a list of ``found`` (``repeated_lists``) built alike (``_repeats``) or whose
    blocks all hold modules of their own (a hybrid's unlike layers, ``_nested_blocks``), or a
    stack of one layer (``single_lists``). Until 2026-12-07 every numbered list counted: a
    ``Sequential`` head (ResNet's ``classifier``: ``Flatten``, ``Linear``; GIT's
    ``visual_projection``) was "a stack of 2 blocks inside E or L" in Megatron-LM's refusal,
    while one-layer stacks did not count at all: a Speech2Text of one encoder and one decoder
    layer, cut between its two subsampling convs (the only list of two), was exported to
    Megatron-LM as ``E|t|t|L``, the whole transformer inside L.
    """
    def related(x: str) -> bool:
        return any(p == x or p.startswith(x + ".") or x.startswith(p + ".") for p in paths)
    stacks = [(x, n) for x, n, _ in found
              if n > 1 and (_repeats(problem, x) or _nested_blocks(problem, x))]
    stacks += [(x, 1) for x in single_lists(problem)]
    return tuple((x, n) for x, n in stacks if x not in lists and not related(x))


def _runs(problem: Problem, paths: list[str]) -> tuple[int, ...]:
    """The layers of ``paths`` (units 1…L) in the order their runs start (``Layers.runs``);
    empty where each runs once.

    [Note: a layer run several times]
    ALBERT shares one layer's weights among all its hidden layers: ``albert_layer_groups.0``
    is the only layer found, and its calls run once per hidden layer. Megatron-LM was told
    ``--num-layers 1`` (until 2026-12-07), a model of one layer where the plan priced two,
    and DeepSpeed's layer list ran it once. A layer's calls, in order, that are one sequence
    repeated ``k`` times are one layer run ``k`` times (the calls name the module within the
    layer that makes them, so a layer of its own weights repeats none; the parameters they
    read are left out, for only the first run owns them). Runs may alternate between layers
    (HRM's ``L_module`` and ``H_module``: L, L, H, L, H), so the record is the order the runs
    start in, which DeepSpeed's layer list follows.
    """
    calls: dict[int, list[tuple[str, str]]] = {}
    at: dict[int, list[int]] = {}  # per layer, the position in node order of each call
    index = {x: u for u, x in enumerate(paths, start=1)}
    for i, n in enumerate(problem.node_order):
        m = problem.node_module.get(n, "")
        parts = m.split(".")
        x = next((p for k in range(1, len(parts) + 1) if (p := ".".join(parts[:k])) in index), None)
        if x is not None:
            # op and target, not the parameters: a later run reads them as shared (``node_call``)
            calls.setdefault(index[x], []).append((m[len(x):], problem.node_call.get(n, "").rsplit(" ", 1)[0]))
            at.setdefault(index[x], []).append(i)
    starts: list[tuple[int, int]] = []
    for u, c in calls.items():
        period = next((p for p in range(1, len(c) // 2 + 1)
                       if len(c) % p == 0 and c == c[:p] * (len(c) // p)), len(c))
        starts += [(at[u][k], u) for k in range(0, len(c), period)]
    order = tuple(u for _, u in sorted(starts))
    return order if len(order) > len(paths) else ()


def _nested_blocks(problem: Problem, x: str) -> bool:
    """Whether every numbered child of list ``x`` that runs nodes runs some in modules of its
    own (``x.3.mlp``; the residual adds run in ``x.3`` itself): blocks, not the leaf modules
    of a ``Sequential`` (``x.1``, a ``Linear``)."""
    calls = _child_calls(problem, x)
    return bool(calls) and all(any(inner for inner, _ in c) for c in calls.values())


def _in_order(problem: Problem, groups: list[list[int]]) -> list[list[int]]:
    """``groups`` (runs of ``problem``'s blocks in order), each merged with the next where
    that one does not read it, directly or through the groups between: then every stage
    holds a run of units ([Note: layers side by side]).

    [Note: layers side by side]
    The partitioners keep every value's reader at or after its maker's stage, nothing more:
    two groups neither of which reads the other may go to stages in either order. Where
    layers run side by side (UperNet's pyramid pooling, ``psp_modules.0`` … ``.3``, each
    pooling the same features) the ILP put ``psp_modules.1`` in stage 1 and
    ``psp_modules.0`` in stage 2, a split by unit ranges cannot say, and the plan failed
    an assertion (until 2026-12-07). So each group must read the one before it: where it
    does not, the two are one group (convex: neither reads the other, and every group
    between them is one of the two), and the units of a stage are a range.
    """
    group_of = {b: g for g, members in enumerate(groups) for b in members}
    reads: list[set[int]] = [set() for _ in groups]  # per group, the groups it reads directly
    for v in problem.values:
        for d in v.dsts:
            if group_of[d] != group_of[v.src]:
                reads[group_of[d]].add(group_of[v.src])
    behind: list[set[int]] = []  # per group, every group it reads, directly or not
    for g in range(len(groups)):
        behind.append(set(reads[g]).union(*(behind[k] for k in reads[g])))
    out: list[list[int]] = []
    held: set[int] = set()  # the groups merged into out[-1]
    for g, members in enumerate(groups):
        if out and not behind[g] & held:  # it does not read the run before it: one group
            out[-1] += members
            held.add(g)
        else:
            out.append(list(members))
            held = {g}
    return out


def stage_units(plan: Plan, layers: Layers) -> list[list[int]]:
    """Per stage of ``plan``, the half-open range of units it holds."""
    held = [{layers.node_unit[n] for n in s.nodes} for s in plan.stages]
    starts = [0] + [min(h) for h in held[1:]] + [len(layers.units)]
    out = [[a, b] for a, b in itertools.pairwise(starts)]
    for (a, b), h in zip(out, held):
        assert a <= min(h) and max(h) < b, f"stage holds units {sorted(h)}, outside [{a}, {b})"
    return out


def _as_baseline(plan: Plan) -> Baseline:
    times = [s.time_s for s in plan.stages]
    worst = times.index(max(times))
    return Baseline(iteration_s=plan.predicted.iteration_s, bottleneck_stage=worst,
                    max_memory=max(s.memory.total for s in plan.stages),
                    stage_nodes=tuple(len(s.nodes) for s in plan.stages), bottleneck_s=times[worst])


def holders(plan: Plan, layers: Layers, profile: Profile) -> list[list[str]]:
    """Per stage of ``plan``, the modules that hold a parameter its nodes read but no module
    of its units holds, in the order the stage's nodes read them.

    [Note: parameters held outside the units]
    A unit owns the modules whose nodes all lie in it, but a parameter can be read by a
    node of another module: DeBERTa's ``encoder.rel_embeddings.weight`` is read by every
    layer's attention (its module is never called), so no unit lists its module and a
    stage split by the unit lists alone (torchtitan's ``_split_module``) would lack it. The
    module holding such a parameter (its first name's, the one the profile reads) goes
    with every stage that reads it; a tied parameter that one of the stage's modules holds
    under another name (GPT-2's ``lm_head.weight``, one Parameter with
    ``transformer.wte.weight``) needs none. A parameter of the model itself (no module
    path) cannot be kept apart from the model and is left out, and so is one that no node
    reads (the output node owns it, ``autopipe.trace``: DINOv2's ``embeddings.mask_token``
    without a mask), which stays with its module wherever that is; until 2026-12-07 it
    put the whole ``dinov2.embeddings`` in the last stage's part. A parameter set directly
    on a module that also encloses layers would keep those layers in the part too:
    ``autopipe.export`` refuses such a plan for torchtitan (LayoutLMv3's ``cls_token``,
    BLIP-2's ``query_tokens``).
    """
    names = {p: group for group in profile.tied for p in group}
    by = profile.by_name
    out: list[list[str]] = []
    for (a, b), stage in zip(stage_units(plan, layers), plan.stages):
        kept = [m for u in layers.units[a:b] for m in u]
        found: list[str] = []
        for n in stage.nodes:
            if by[n].op == "output":  # it owns the parameters no node reads: they need no holder
                continue
            for param in (*by[n].params, *by[n].shared_params):
                if any(_under(q, kept) for q in names.get(param, (param,))):
                    continue
                module = param.rpartition(".")[0]
                if module and not _under(param, found):
                    found.append(module)
        out.append(found)
    return out


def root_params(plan: Plan, profile: Profile) -> list[list[str]]:
    """Per stage of ``plan``, the parameters of the model itself (no module path: CLIP's
    ``logit_scale``) its nodes read, none of them held under a module path too.

    An engine that builds a stage from a copy of the model and keeps the listed modules
    (torchtitan) keeps these in every part, and one that builds a stage from its modules
    (DeepSpeed) in none ([Note: the model's own parameters in an export] in
    ``autopipe.export.tied``); ``holders`` cannot name a module for them.
    """
    names = {p: group for group in profile.tied for p in group}
    by = profile.by_name
    out: list[list[str]] = []
    for stage in plan.stages:
        found: list[str] = []
        for n in stage.nodes:
            for param in (*by[n].params, *by[n].shared_params):
                group = names.get(param, (param,))
                if all("." not in q for q in group) and param not in found:
                    found.append(param)
        out.append(found)
    return out


def _under(name: str, modules: list[str]) -> bool:
    """Whether ``name`` lies inside one of ``modules``."""
    return any(name.startswith(m + ".") for m in modules)


def tied_ends(layers: Layers, profile: Profile) -> bool:
    """Whether a parameter is read both before the layers and after them: an embedding tied
    to the output layer (GPT-2's ``wte``), as Megatron-LM builds its models by default."""
    last = len(layers.units) - 1
    ends: dict[str, set[int]] = {}
    for n in profile.nodes:
        unit = layers.node_unit.get(n.name)
        if unit in (0, last):
            for q in (*n.params, *n.shared_params):
                ends.setdefault(q, set()).add(unit)
    return any(len(u) == 2 for u in ends.values())


def record(plan: Plan, layers: Layers, solve_free: Callable[[], Plan], profile: Profile) -> Plan:
    """``plan`` (layer-granular) with its units, the modules each stage reads parameters of
    beyond them (``holders``), the parameters each stage reads (``params``: [Note: the
    parameters in a plan's layer record]), what the restriction costs, and where the plan
    recomputes, the units its recomputed nodes lie in per stage (``recompute_units``).

    ``solve_free()`` plans the same model without the restriction. The restricted
    partition is one of the unrestricted ones too, so the unrestricted figure is the
    faster of the two (the solver's gap, coarsening or a time limit can leave the free
    solve a little slower, or without an answer).
    """
    try:
        free: Plan | None = solve_free()
    except PlanError:
        free = None
    best = plan if free is None or free.predicted.iteration_s > plan.predicted.iteration_s else free
    step = best.predicted.iteration_s
    info: dict[str, Any] = {
        "mode": "layer", "pattern": layers.pattern, "auto": layers.auto,
        "layers": len(layers.units) - 2, "lists": list(layers.lists), "alike": layers.alike,
        "units": [list(u) for u in layers.units],
        # [Note: a layer run several times]
        **({"runs": list(layers.runs)} if layers.runs else {}),
        # always, [] for none: a record without it cannot say ([Note: a layer record without
        # uncut] in autopipe.export.megatron)
        "uncut": [[x, n] for x, n in layers.uncut],
        "stage_units": stage_units(plan, layers),
        "holders": holders(plan, layers, profile),
        **({"root_params": roots} if any(roots := root_params(plan, profile)) else {}),
        "unrestricted_s": step,
        "cost": plan.predicted.iteration_s / step if step > 0 else 1.0,
        "tied_ends": tied_ends(layers, profile),  # [Note: an output layer of its own] in autopipe.export.megatron
        "params": param_reads(plan, profile),  # [Note: the parameters in a plan's layer record]
    }
    if plan.recomputes:  # which units the engines must recompute (autopipe.export)
        info["recompute_units"] = [sorted({layers.node_unit[n] for g in s.recompute for n in g})
                                   for s in plan.stages]
    return replace(plan, baselines={**plan.baselines, "unrestricted": _as_baseline(best)},
                   options={**plan.options, "granularity": info})
