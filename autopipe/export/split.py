"""The layer split of a Plan: which whole units (embeddings, layers, head) each stage holds.

A plan made with ``--granularity layer`` records its units in
``plan.options["granularity"]`` (``autopipe.partition.layers``): per unit the modules
it owns — unit 0 what runs before the first layer, units 1…L the layers, unit L+1 what
runs after the last — and per stage the half-open range of units it holds. This module
reads that record back, checks it against the stages' own module lists, and explains
a plan that has none (most often: one that cuts inside a layer).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from autopipe.errors import ExportError
from autopipe.plan_format import Plan

HINT = ("plan it again with `autopipe plan SPEC ... --granularity layer`, or with --cut-at PATTERN "
        "naming the blocks to cut between where it finds no layers")


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerSplit:
    """Whole units per stage."""

    pattern: str
    """The module pattern the layers match (``model.layers.*``)."""
    units: tuple[tuple[str, ...], ...]
    """Per unit, its modules: unit 0 before the layers, 1…L the layers, L+1 after them."""
    stage_units: tuple[tuple[int, int], ...]
    """Per stage, the half-open range of units it holds (consecutive, covering all)."""
    lists: tuple[str, ...] = ()
    """The module lists the layers belong to (recorded since plans cut between the layers
    of several lists; empty in older plans, which had one)."""
    holders: tuple[tuple[str, ...], ...] = ()
    """Per stage, the modules outside its units that hold parameters it reads ([Note:
    parameters held outside the units] in ``autopipe.partition.layers``; empty in older
    plans)."""
    recompute_units: tuple[tuple[int, ...], ...] = ()
    """Per stage, the units whose nodes it recomputes in backward (empty where the plan
    recomputes nothing)."""
    uncut: tuple[tuple[str, int], ...] | None = ()
    """Other lists of repeated blocks that the plan does not cut between, outside its layers
    (``Layers.uncut`` in ``autopipe.partition.layers``); None where the plan does not say
    (written before 2026-12-07, or then without stacks left uncut: the two read alike)."""
    auto: bool = False
    """True when the planner found the layers, False when ``--cut-at`` named them."""
    tied_ends: bool | None = None
    """Whether a parameter is read both before the layers and after them (an embedding tied
    to the output layer: ``layers.tied_ends``); None in plans from before it was recorded
    (2026-12-07)."""
    runs: tuple[int, ...] = ()
    """The layers (units 1…L) in the order their runs start, where the model runs one several
    times (``Layers.runs``: ALBERT's one shared layer group, once per hidden layer); empty
    where each runs once, in order, or in plans from before it was recorded (2026-12-07)."""
    alike: bool | None = None
    """Whether the layers are the numbered blocks of ``lists``, each list's built alike
    (``Layers.alike`` in ``autopipe.partition.layers``; None in plans from before it was
    recorded, 2026-12-07)."""

    @property
    def num_layers(self) -> int:
        """Number of layers L."""
        return len(self.units) - 2

    def visible_stacks(self) -> list[tuple[str, int]]:
        """Lists of numbered blocks (``X.0``, ``X.1``, …, two or more) among the modules of
        the units outside the layers, not among ``lists``: stacks the plan leaves inside the
        first or last unit, as far as their module paths show them (a stack inside a module
        held whole, ``model.encoder``, does not show)."""
        found: dict[str, set[str]] = {}
        for module in (*self.units[0], *self.units[-1]):
            parts = module.split(".")
            for k, part in enumerate(parts[1:], start=1):
                if part.isdigit():
                    found.setdefault(".".join(parts[:k]), set()).add(part)
        return [(x, len(n)) for x, n in sorted(found.items()) if len(n) >= 2 and x not in self.lists]

    def shared(self) -> list[tuple[str, int]]:
        """The layers the model runs several times, each with how many ([Note: a layer run
        several times] in ``autopipe.partition.layers``)."""
        counts = [self.runs.count(u) for u in range(1, self.num_layers + 1)]
        return [(u[0] if u else "(nothing)", k) for u, k in zip(self.units[1:-1], counts) if k > 1]

    def stage_runs(self, stage: int) -> list[int]:
        """The units stage ``stage`` runs, in order, a unit the model runs ``k`` times ``k``
        times ([Note: a layer run several times] in ``autopipe.partition.layers``)."""
        a, b = self.stage_units[stage]
        if not self.runs:
            return list(range(a, b))
        inner = [u for u in self.runs if a <= u < b]
        return [*([0] if a == 0 else []), *inner, *([b - 1] if b == len(self.units) else [])]

    def layers_per_stage(self) -> list[int]:
        """How many layers (units 1…L) each stage holds."""
        return [max(0, min(b, self.num_layers + 1) - max(a, 1)) for a, b in self.stage_units]

    def stage_modules(self, stage: int) -> list[str]:
        """The modules of stage ``stage``'s units, in order."""
        a, b = self.stage_units[stage]
        return [m for u in self.units[a:b] for m in u]

    def recomputed(self, stage: int) -> list[str]:
        """The modules of the units stage ``stage`` recomputes (some of their nodes, at least)."""
        return [m for u in self.recompute_units[stage] for m in self.units[u]] if self.recompute_units else []

    def recomputed_layers(self, stage: int) -> int:
        """How many layers (units 1…L) stage ``stage`` recomputes."""
        units = self.recompute_units[stage] if self.recompute_units else ()
        return sum(1 for u in units if 1 <= u <= self.num_layers)

    def recomputes_outside_layers(self) -> list[str]:
        """The modules outside the layers (embeddings, head) that some stage recomputes."""
        return [m for units in self.recompute_units for u in units
                if not 1 <= u <= self.num_layers for m in self.units[u]]

    def stage_holders(self, stage: int) -> list[str]:
        """The modules outside stage ``stage``'s units that hold parameters it reads."""
        return list(self.holders[stage]) if self.holders else []

    def swallowing(self, stage: int) -> list[tuple[str, int, list[str]]]:
        """The holders of stage ``stage`` that enclose modules of another stage's units: each
        holder, the first such stage and its modules under the holder.

        [Note: a holder that encloses layers]
        A parameter set directly on a module that also encloses layers (LayoutLMv3's
        ``layoutlmv3.cls_token`` and ``pos_embed``, BLIP-2's ``query_tokens`` on the model
        itself) makes that module a holder ([Note: parameters held outside the units] in
        ``autopipe.partition.layers``), and a part that lists it keeps it whole: the layers of
        every other stage under it too. torchtitan was told that stage 0 of a 2-stage
        LayoutLMv3 keeps ``model.layoutlmv3``, the whole encoder with it (until 2026-12-07),
        then refused such plans. Its split keeps what is set directly on a module on the way
        to one it lists, so a part that lists a module under the holder keeps those
        parameters without naming it; what the holder stood for deeper inside it
        (LayoutLMv3's ``encoder.rel_pos_bias``) the plan's record of the parameters each
        stage reads names ([Note: every parameter in a part] in ``autopipe.export.params``).
        Since 2026-12-08 torchtitan's export leaves such a holder out where both hold, and
        refuses the plan only where the part lists nothing under it, or the plan does not
        record what its stages read.
        """
        out = []
        for holder in self.stage_holders(stage):
            for other in range(len(self.stage_units)):
                under = [m for m in self.stage_modules(other) if m.startswith(holder + ".")]
                if other != stage and under:
                    out.append((holder, other, under))
                    break
        return out

    def _block(self, m: str) -> bool:
        """Whether module ``m`` is a numbered child of a list (of any, in plans without lists)."""
        parent, _, last = m.rpartition(".")
        return last.isdigit() and (not self.lists or parent in self.lists)

    def numbered(self) -> bool:
        """Whether every layer holds a numbered block of its list (``X.3``): False where the
        pattern matched modules inside the blocks (``model.layers.*.mlp``), whose parents
        (``model.layers.0``, …) are then recorded as ``lists``."""
        return all(any(self._block(m) for m in u) for u in self.units[1:-1])

    def stacked(self) -> bool:
        """Whether the layers are the numbered blocks of their lists, two or more of each:
        stacks of layers (an encoder's and a decoder's). False for a ``--cut-at`` that names
        modules inside the blocks (``model.layers.*.mlp``, ``blocks.*.0``), whose parents are
        then recorded as lists of one layer each."""
        if not self.numbered():
            return False
        counts: dict[str, int] = {}
        for u in self.units[1:-1]:
            parent = next(m for m in u if self._block(m)).rpartition(".")[0]
            counts[parent] = counts.get(parent, 0) + 1
        return all(n >= 2 for n in counts.values())

    def unlike(self) -> str | None:
        """Why the layers are no stack of transformer layers built alike, as an engine that
        counts them (Megatron-LM's ``t``) needs; None where they are one.

        ``--cut-at`` may name any modules (``transformer.*``: the embeddings, the whole block
        list, the final norm; ``transformer.h.1``: one block, the others in the units around
        it): a plan can cut between them, and torchtitan's and DeepSpeed's module lists say
        exactly which each stage holds, but a count of such "layers" describes another model.
        The layers must be numbered children of their lists (``X.3``), every numbered child
        a layer of its own (both read from the record, so older plans are judged too), and
        built alike (``alike``, recorded at planning time, where the calls each runs are known).
        """

        block = self._block
        layers = self.units[1:-1]
        names = [u[0] if u else "(nothing)" for u in layers]
        shown = ", ".join(names[:5]) + (f", … ({len(names)} in all)" if len(names) > 5 else "")
        if not self.numbered():
            return f"are not the numbered blocks of a module list ({shown})"
        own = {next(m for m in u if block(m)) for u in layers}
        stray = [m for u in self.units for m in u if block(m) and m not in own]
        if stray:
            return (f"are not all the blocks of {', '.join(self.lists) or 'their list'} "
                    f"({', '.join(stray[:3])}{', …' if len(stray) > 3 else ''} lie outside them)")
        if self.alike is False:
            return (f"are blocks of {', '.join(self.lists)} that are not built alike (they run "
                    f"different calls: {shown})")
        return None


def layer_split(plan: Plan) -> LayerSplit:
    """The layer split ``plan`` records, checked against its stages.

    Raises:
        ExportError: the plan has no layer split (it cuts inside a layer, or was planned
            without ``--granularity layer``), or its record contradicts its stages.
    """
    info = plan.options.get("granularity")
    if not isinstance(info, dict):
        raise ExportError(_unrecorded(plan), hint=HINT)
    try:
        split = LayerSplit(pattern=str(info["pattern"]),
                           units=tuple(tuple(str(m) for m in u) for u in info["units"]),
                           stage_units=tuple((int(a), int(b)) for a, b in info["stage_units"]),
                           lists=tuple(str(x) for x in info.get("lists", ())),
                           holders=tuple(tuple(str(m) for m in h) for h in info.get("holders", ())),
                           recompute_units=tuple(tuple(int(u) for u in r)
                                                 for r in info.get("recompute_units", ())),
                           uncut=tuple((str(x), int(n)) for x, n in info["uncut"]) if "uncut" in info else None,
                           auto=bool(info.get("auto", False)),
                           runs=tuple(int(k) for k in info.get("runs", ())),
                           tied_ends=None if info.get("tied_ends") is None else bool(info["tied_ends"]),
                           alike=None if info.get("alike") is None else bool(info["alike"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ExportError(f"the plan's layer record is malformed ({type(e).__name__}: {e})",
                          hint=HINT) from None
    _check(plan, split)
    return split


def _check(plan: Plan, split: LayerSplit) -> None:
    ranges = split.stage_units
    starts = [a for a, _ in ranges]
    if (len(ranges) != plan.num_stages or starts[0] != 0 or starts != sorted(starts)
            or list(ranges) != list(itertools.pairwise([*starts, len(split.units)]))):
        raise ExportError(f"the plan's layer record does not cover its {plan.num_stages} stages "
                          f"with consecutive units (stage_units {[list(r) for r in ranges]})",
                          hint=HINT)
    if split.holders and len(split.holders) != plan.num_stages:
        raise ExportError(f"the plan's layer record lists parameter holders for "
                          f"{len(split.holders)} stages, but the plan has {plan.num_stages}", hint=HINT)
    if plan.recomputes and not split.recompute_units:
        raise ExportError("the plan recomputes activations, but its layer record does not say in "
                          "which layers (it was made before autopipe recorded them)",
                          hint="plan it again with this version of autopipe")
    if split.runs and set(split.runs) != set(range(1, split.num_layers + 1)):
        raise ExportError(f"the plan's layer record gives the runs of layers {sorted(set(split.runs))}, "
                          f"but its layers are units 1 to {split.num_layers}", hint=HINT)
    if split.recompute_units and (len(split.recompute_units) != plan.num_stages or any(
            not a <= u < b for (a, b), units in zip(ranges, split.recompute_units) for u in units)):
        raise ExportError(f"the plan's layer record lists recomputed units outside their stages "
                          f"({[list(r) for r in split.recompute_units]})", hint=HINT)
    owner = {m: s for s in range(plan.num_stages) for m in split.stage_modules(s)}
    for stage in plan.stages:
        for module in stage.modules:
            unit = _enclosing(module, owner)
            if unit is not None and unit != module:
                raise ExportError(f"the plan cuts inside {unit}: stage {stage.index} holds only "
                                  f"its part {module}", hint=HINT)
    held = {m: stage.index for stage in plan.stages for m in stage.modules}
    for unit, s in owner.items():
        where = _enclosing(unit, held)
        if where is None or held[where] != s:
            found = "no stage holds it whole" if where is None else f"stage {held[where]} holds it"
            raise ExportError(f"the plan's layer record puts {unit} in stage {s}, but {found}",
                              hint=HINT)


def _enclosing(module: str, owner: dict[str, Any]) -> str | None:
    """The unit module ``module`` is or lies in, if any."""
    parts = module.split(".")
    for k in range(1, len(parts) + 1):
        prefix = ".".join(parts[:k])
        if prefix in owner:
            return prefix
    return None


def _unrecorded(plan: Plan) -> str:
    """Why a plan without a layer record cannot be exported: the layer it cuts, if one shows."""
    cut: dict[str, dict[int, list[str]]] = {}
    for stage in plan.stages:
        for module in stage.modules:
            parts = module.split(".")
            digit = next((k for k, p in enumerate(parts) if p.isdigit()), None)
            if digit is not None and digit + 1 < len(parts):  # a part of layer X.i, not X.i
                layer = ".".join(parts[:digit + 1])
                cut.setdefault(layer, {}).setdefault(stage.index, []).append(module)
    if cut:
        # a layer whose parts two stages list; else one stage lists its parts, and the rest of
        # it lies in modules that no stage holds whole (T5's decoder block 0 cut inside its
        # first layer norm: "split across stages (stage 1: …)" named one stage, until 2026-12-07)
        layer, held = max(cut.items(), key=lambda item: len(item[1]) > 1)
        where = "; ".join(f"stage {s}: {', '.join(m[:2])}{', …' if len(m) > 2 else ''}"
                          for s, m in held.items())
        if len(held) == 1:
            only = next(iter(held))
            where += (f"; the rest of it runs in modules the plan cuts between stage {only} "
                      f"and another")
        return (f"the plan cuts inside a layer: {layer} is split across stages ({where}); "
                f"torchtitan, DeepSpeed and Megatron-LM give each stage whole layers")
    return ("the plan records no layer boundaries (it was planned without --granularity "
            "layer); torchtitan, DeepSpeed and Megatron-LM give each stage whole layers")
