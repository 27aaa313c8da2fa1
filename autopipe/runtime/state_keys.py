"""Matching a state dict of the unsplit model against the tensors one rank holds, by name."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch

from autopipe.errors import CheckpointError


def canonical_names(tensors: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Name → the first name of the same tensor (tied tensors share one)."""
    first: dict[int, str] = {}
    return {name: first.setdefault(id(t), name) for name, t in tensors.items()}


def tied_groups(canonical: Mapping[str, str]) -> list[tuple[str, ...]]:
    """The names of each tensor held under several (``canonical_names``'s), first name first."""
    groups: dict[str, list[str]] = {}
    for name, c in canonical.items():
        groups.setdefault(c, []).append(name)
    return [tuple(g) for g in groups.values() if len(g) > 1]


def match_state(
    own: Mapping[str, torch.Tensor],
    given: Mapping[str, tuple[int, ...]],
    *,
    tied: Iterable[Sequence[str]],
    known: set[str],
    strict: bool,
    what: str,
    source: str,
) -> list[tuple[str, str]]:
    """Pair each of this rank's tensors with the key of ``given`` that holds it.

    Args:
        own: this rank's tensors by name (a tied parameter under its first name).
        given: key → shape of what is offered (a state dict, a checkpoint's entries).
        tied: groups of names of one parameter; any of them may hold it in ``given``.
        known: every name the unsplit model has.
        strict: a tensor of ``own`` missing from ``given``, or a key the model does not
            have, is an error.
        what: names ``given`` in the message (``"checkpoint DIR/step-000004"``).
        source: names ``given``'s shapes in the message (``"checkpoint"``).

    Returns:
        (name in ``own``, key in ``given``) for every tensor that ``given`` holds.

    Raises:
        CheckpointError: keys missing or unknown (strict), or shapes that differ; named.
    """
    aliases = {name: tuple(group) for group in tied for name in group}
    pairs: list[tuple[str, str]] = []
    missing: list[str] = []
    wrong: list[str] = []
    for name, mine in own.items():
        key = next((a for a in aliases.get(name, (name,)) if a in given), None)
        if key is None:
            missing.append(name)
        elif tuple(given[key]) != tuple(mine.shape):
            wrong.append(f"{name} ({source} {tuple(given[key])}, model {tuple(mine.shape)})")
        else:
            pairs.append((name, key))
    unknown = sorted(set(given) - known) if strict else []
    parts = []
    if missing and strict:
        parts.append(f"missing {names(sorted(missing))}")
    if unknown:
        parts.append(f"not in the model {names(unknown)}")
    if wrong:
        parts.append(f"other shapes {names(wrong)}")
    if parts:
        raise CheckpointError(f"{what} does not fit the model: " + "; ".join(parts),
                              hint="load state saved from this model (same spec and --spec-arg knobs)")
    return pairs


def check_tied_alike(state: Mapping[str, torch.Tensor], tied: Iterable[Sequence[str]], *, what: str) -> None:
    """Raise CheckpointError where ``state`` holds one tied parameter under several names
    with different values (its model did not tie them; ``match_state`` reads one of them).

    Until 2026-12-07 the first name given was copied, silently; ``load_state_dict`` keeps the last.
    """
    for group in tied:
        present = [n for n in group if n in state]
        for other in present[1:]:
            a, b = state[present[0]], state[other]
            if a.shape == b.shape and not torch.equal(a, b.to(device=a.device, dtype=a.dtype)):
                raise CheckpointError(
                    f"{what} holds {present[0]} and {other} with different values, but the model "
                    f"ties them (one parameter under {len(group)} names)",
                    hint="give one value under both names (or one name), or build the model untied, "
                         "as the state's was")


def names(items: Sequence[str], most: int = 5) -> str:
    shown = ", ".join(items[:most])
    return f"{len(items)}: {shown}" + (f" and {len(items) - most} more" if len(items) > most else "")
