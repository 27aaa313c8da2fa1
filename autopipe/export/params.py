"""Which of the model's parameters each exported part keeps, checked against the plan's profile.

[Note: every parameter in a part]
A part is a module list, and an engine keeps what lies under the modules it lists: the
parameters of a module the forward never calls lie in no unit of the plan's layer record, so
in no part. ESM's ``contact_head`` (its masked-LM forward never reads it), T5Gemma2's vision
tower on text-only inputs and Decision Transformer's unused GPT-2 ``wte`` were dropped by
torchtitan's split, and a checkpoint of the parts lacked their weights (the export sweep of
2026-12-07). The plan gives such parameters to its last stage (the output node owns them,
``autopipe.trace``) and prices them there, so the export adds their modules to the last part,
each the outermost module that holds nothing else (``esm.contact_head``, not its
``regression``). A part can also keep a parameter its stage never reads, set directly on a
module it lists: T5Gemma2's decoder embedding carries ``eoi_embedding``, a second name of the
encoder's, which only the encoder reads, so a 4-stage plan's part 1 held a copy that never
trains and a checkpoint of the parts saved it, stale, beside the trained one (which wins on
loading depends on the order). A part cannot list less than a module, so a note names each
such copy. The check needs every parameter's name, which names are one Parameter, and which
parameters each stage's nodes read: a plan's layer record carries them since 2026-12-08
([Note: the parameters in a plan's layer record] in ``autopipe.partition.param_reads``), the
profile the plan was made from (``--profile``) always did; an older plan without the profile
gets a note that its parts may lack such parameters. A parameter of the model itself is
noted already ([Note: the model's own parameters in an export]).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from autopipe.errors import ExportError
from autopipe.export._words import indices
from autopipe.plan_format import Plan
from autopipe.profile.profile import Profile, canonical_names


@dataclass(frozen=True, slots=True, kw_only=True)
class Audit:
    """What the parts of an export lack, and what they keep without reading it."""

    unplaced: list[str]
    """Modules whose parameters lie in no part and no node reads, to add to the last part
    (outermost only)."""
    unheld: list[list[str]]
    """Per stage, modules whose parameters its nodes read but its part lacks, to add to its
    part: the plan's holders name a module that encloses them and layers (LayoutLMv3's
    ``layoutlmv3``, for its ``cls_token``, stands for ``encoder.rel_pos_bias`` too; HRM's
    ``model`` for a layer whose no-grad cycle stage 0 runs), which DeepSpeed's holders leave
    out ([Note: holders in DeepSpeed's layers])."""
    notes: list[str]
    """One per parameter in no part that no module can bring in, and one per parameter that
    a part keeps but its stage never reads, where that matters."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Reads:
    """The model's parameters, and which of them each stage of the plan reads."""

    canon: dict[str, str]
    """Every parameter name of the model (tied aliases too) → its canonical name."""
    read: list[set[str]]
    """Per stage, the canonical names its nodes read (the output node's left out: it owns the
    parameters no node reads)."""


def profile_reads(plan: Plan, profile: Profile) -> Reads:
    """What ``profile`` (the one ``plan`` was made from) says each stage reads.

    Raises:
        ExportError: the profile is of another model than the plan's.
    """
    if profile.graph_fingerprint and profile.graph_fingerprint != plan.graph_fingerprint:
        raise ExportError(f"the profile is of another model or input shape than the plan "
                          f"(fingerprint {profile.graph_fingerprint[:12]}, the plan's "
                          f"{plan.graph_fingerprint[:12]})",
                          hint="pass the profile the plan was made from (autopipe plan ... --profile)")
    by = profile.by_name
    unknown = [n for s in plan.stages for n in s.nodes if n not in by]
    if unknown:
        raise ExportError(f"the plan's nodes {', '.join(unknown[:3])} are not in the profile: it is "
                          f"of another model than the plan",
                          hint="pass the profile the plan was made from (autopipe plan ... --profile)")
    return Reads(canon=canonical_names(profile.params, profile.tied),
                 read=[set(profile.param_reads(s.nodes)) for s in plan.stages])


def recorded(plan: Plan) -> bool:
    """Whether ``plan``'s layer record names the parameters each stage reads ([Note: the
    parameters in a plan's layer record])."""
    info = plan.options.get("granularity")
    return isinstance(info, dict) and info.get("params") is not None


def plan_reads(plan: Plan) -> Reads | None:
    """What ``plan``'s layer record says each stage reads ([Note: the parameters in a plan's
    layer record]); None for a plan made before it said (2026-12-08).

    Raises:
        ExportError: the record is malformed, or does not match the plan's stages.
    """
    if not recorded(plan):
        return None
    record = plan.options["granularity"]["params"]
    hint = "plan it again with this version of autopipe, or pass the profile it was made from (--profile)"
    try:
        params = [str(q) for q in record["names"]]
        tied = [[str(q) for q in group] for group in record["tied"]]
        read = [{str(q) for q in r} for r in record["reads"]]
    except (KeyError, TypeError) as e:
        raise ExportError(f"the parameters in the plan's layer record are malformed "
                          f"({type(e).__name__}: {e})", hint=hint) from None
    canon = canonical_names(params, tied)
    strays = sorted(q for r in read for q in r if canon.get(q) != q)
    if len(read) != plan.num_stages or strays or any(not g for g in tied):
        why = (f"names {', '.join(strays[:3])}, none of its parameters" if strays
               else f"lists the reads of {len(read)} stages, but the plan has {plan.num_stages}")
        raise ExportError(f"the plan's layer record {why}", hint=hint)
    return Reads(canon=canon, read=read)


def kept(fqns: Iterable[str], params: Iterable[str], *, containers: bool) -> set[str]:
    """The names in ``params`` that a part listing modules ``fqns`` keeps: those under a listed
    module, and with ``containers`` (torchtitan's ``_split_module``, which deep-copies the model
    and drops the children it does not need) those set directly on a module on the way to one,
    or on the model itself."""
    keep = set(fqns)
    way = {".".join(f.split(".")[:k]) for f in keep for k in range(1, f.count(".") + 1)}
    out = set()
    for name in params:
        parts = name.split(".")
        module = ".".join(parts[:-1])
        if any(".".join(parts[:k]) in keep for k in range(1, len(parts))) or (
                containers and (not module or module in way)):
            out.add(name)
    return out


def complete(fmt: str, plan: Plan, profile: Profile | None, out: dict[str, Any]) -> None:
    """Add to ``out`` (format ``fmt``'s export of ``plan``) the modules whose parameters lie in
    no part, and the notes of ``audit``, from ``profile`` where given (the one the plan was
    made from), else from the plan's layer record; formats without module lists are left as
    they are. An older plan without the profile gets a note that its parts may lack some.

    Raises:
        ExportError: the profile is of another model than the plan's, or the plan's record of
            its parameters is malformed.
    """
    if fmt not in COMPLETE:
        return
    reads = profile_reads(plan, profile) if profile is not None else plan_reads(plan)
    if reads is None:
        out["notes"] = [*out["notes"], UNRECORDED]
    else:
        COMPLETE[fmt](reads, out)


UNRECORDED = ("the plan does not record which parameters its stages read (it was made before "
              "2026-12-08), so a module no node reads (ESM's contact_head) may lie in no part, and a "
              "part may keep a copy of a tied parameter it never reads: plan it again, or export it "
              "with the profile it was made from (--profile)")


def audit(reads: Reads, parts: Sequence[Sequence[str]], *, containers: bool, engine: str) -> Audit:
    """Check ``parts`` (per stage, the modules its part keeps) against ``reads``."""
    canon, read = reads.canon, reads.read
    # a Parameter is held where any of its names is (a tied alias in no part is no loss)
    held = [{canon[q] for q in kept(p, canon, containers=containers)} for p in parts]
    unheld: list[list[str]] = []
    orphans: list[str] = []
    for s, part in enumerate(parts):  # what the stage reads but its part lacks: its holders
        lacking = read[s] - held[s]
        pool = {q for q in canon if canon[q] in lacking}
        found: list[str] = []
        for q in [q for q in canon if q in pool]:
            if not any(q.startswith(m + ".") for m in found):
                module = _outermost(q, pool, canon, part)
                if module is not None:
                    found.append(module)
                elif q == canon[q] and q not in orphans:
                    orphans.append(q)
        unheld.append(found)
    anywhere = set().union(*held, *read)
    missing = {q for q, c in canon.items() if c not in anywhere}  # no node reads it, no part holds it
    unplaced: list[str] = []
    for q in [q for q in canon if q in missing]:
        if not any(q.startswith(m + ".") for m in unplaced):
            module = _outermost(q, missing, canon, [m for p in parts for m in p])
            if module is not None:
                unplaced.append(module)
            elif q not in orphans:
                orphans.append(q)
    complete = [[*p, *extra] for p, extra in zip(parts, unheld)]
    complete[-1] += unplaced
    final = [kept(p, canon, containers=containers) for p in complete]
    return Audit(unplaced=unplaced, unheld=unheld,
                 notes=[*_orphan_notes(orphans, read, engine), *_stale(canon, final, read, engine)])


def _orphan_notes(orphans: list[str], read: list[set[str]], engine: str) -> list[str]:
    """A note per parameter that no stage reads and no part holds, nor can by a module: set
    directly on a module that encloses listed ones (XLNet's ``transformer.mask_emb`` for
    DeepSpeed, whose layers hold the modules they name and nothing on the way to them), or on
    the model itself. One that a stage reads is a holder that encloses layers, noted with the
    plan's holders ([Note: holders in DeepSpeed's layers]), or a parameter of the model itself,
    noted with the plan's ``root_params`` ([Note: the model's own parameters in an export])."""
    where = {q: (f"set directly on {q.rpartition('.')[0]}, which encloses modules of the parts"
                 if "." in q else "a parameter of the model itself") for q in orphans}
    return [f"{q} is {where[q]}, so none of {engine} parts holds it, and no stage reads it: hold "
            f"it in a module of the last stage's layers, or a checkpoint of the parts lacks it"
            for q in orphans if not any(q in r for r in read)]


def _outermost(name: str, missing: set[str], canon: Iterable[str], listed: Sequence[str]) -> str | None:
    """The outermost module holding ``name`` all of whose parameters are ``missing`` and that
    encloses no listed module (``esm.contact_head`` for ``esm.contact_head.regression.weight``);
    None where the parameter is set directly on a module that encloses listed ones."""
    parts = name.split(".")
    for k in range(1, len(parts)):
        module = ".".join(parts[:k])
        under = [q for q in canon if q.startswith(module + ".")]
        if all(q in missing for q in under) and not any(
                m == module or m.startswith(module + ".") for m in listed):
            return module
    return None


def _stale(canon: dict[str, str], held: list[set[str]], read: list[set[str]], engine: str) -> list[str]:
    """A note per parameter that parts keep but their stages never read, where that leaves a
    copy apart from the one that trains, or several copies of one that none trains."""
    groups: dict[str, list[str]] = {}
    for q, c in canon.items():
        groups.setdefault(c, []).append(q)
    out = []
    for param, group in groups.items():
        if all("." not in q for q in group):
            continue  # the model's own: [Note: the model's own parameters in an export]
        keepers = {s: [q for q in group if q in h] for s, h in enumerate(held)}
        keepers = {s: qs for s, qs in keepers.items() if qs}
        readers = [s for s in range(len(read)) if param in read[s]]
        idle = [s for s in keepers if s not in readers]
        if not idle or (not readers and len(keepers) == 1):
            continue
        kept_names = sorted({q for s in idle for q in keepers[s]})
        shown = ", ".join(kept_names) + ("" if kept_names == [param] else f" (one Parameter with {param})")
        if readers:
            out.append(f"{engine} {indices('part', idle)} {'keeps' if len(idle) == 1 else 'keep'} {shown}, "
                       f"which only {indices('stage', readers)} read{'s' * (len(readers) == 1)}: "
                       f"the copy there never trains, and a checkpoint of the parts saves it beside "
                       f"the trained one; drop it from {indices('part', idle)}'s state dict")
        else:
            rest = [s for s in keepers if s != min(keepers)]
            out.append(f"{engine} {indices('part', list(keepers))} each keep {shown}, which no stage reads: "
                       f"keep it in part {min(keepers)} and drop it from {indices('part', rest)}'s state dict, "
                       f"or a checkpoint of the parts saves it {len(keepers)} times")
    return out



def _complete_torchtitan(reads: Reads, out: dict[str, Any]) -> None:
    parts: list[list[str]] = out["parallelism"]["module_fqns_per_model_part"]
    found = audit(reads, parts, containers=True, engine="torchtitan's")
    for part, extra in zip(parts, found.unheld):
        part += extra
    parts[-1] += found.unplaced
    out["notes"] += [*_unplaced_notes(found.unplaced, "the last part"),
                     *_unheld_notes(found.unheld, "its part lists"), *found.notes]


def _complete_deepspeed(reads: Reads, out: dict[str, Any]) -> None:
    layers: list[list[str]] = out["layers"]
    bounds: list[int] = out["parts"]
    held = [[m for entry in layers[a:b] for m in entry] + list(h)
            for a, b, h in zip(bounds, bounds[1:], out["holders"])]
    found = audit(reads, held, containers=False, engine="DeepSpeed's")
    for holders, extra in zip(out["holders"], found.unheld):
        holders += extra
    if found.unplaced:
        if bounds[-1] > bounds[-2]:
            layers[-1] += found.unplaced
        else:  # the last stage has no layer: the modules make one
            layers.append(list(found.unplaced))
            bounds[-1] += 1
    out["notes"] += [*_unplaced_notes(found.unplaced, "the last stage's last layer"),
                     *_unheld_notes(found.unheld, "its holders list"), *found.notes]


def _unheld_notes(unheld: list[list[str]], where: str) -> list[str]:
    return [f"stage {s} reads parameters of {', '.join(modules)}, which the plan's holders name only "
            f"with a module that encloses layers: {where} {'it' if len(modules) == 1 else 'them'}"
            for s, modules in enumerate(unheld) if modules]


def _unplaced_notes(unplaced: list[str], where: str) -> list[str]:
    if not unplaced:
        return []
    more = f", … ({len(unplaced)} modules)" if len(unplaced) > 3 else ""
    return [f"no node of the plan reads the parameters of {', '.join(unplaced[:3])}{more}, so no "
            f"unit holds {'it' if len(unplaced) == 1 else 'them'}: {where} keeps "
            f"{'it' if len(unplaced) == 1 else 'them'}, where the plan priced the parameters, so "
            f"that a checkpoint of the parts holds every weight"]


COMPLETE: dict[str, Callable[[Reads, dict[str, Any]], None]] = {
    "torchtitan": _complete_torchtitan, "deepspeed": _complete_deepspeed}
"""The formats whose parts name modules: their parts hold every parameter."""
