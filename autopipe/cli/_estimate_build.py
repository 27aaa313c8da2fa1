"""Building SPEC for an estimate (`plan --device-spec`, `profile --device meta`): on the meta
device where it can be, else with weights and a note why; and what a profile records of it."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from autopipe.errors import AutopipeError, PlanMismatchError
from autopipe.profile.profile import Profile
from autopipe.spec import ModelSpec, parse_spec_args

T = TypeVar("T")

Loader = Callable[[bool], tuple[ModelSpec, str | None]]
"""``load(estimate)``: SPEC built for an estimate (``load_spec_for_estimate``: the spec and
why it has weights after all) or, with False, as usual (the spec and None)."""


def built_for_estimate(where: str, load: Loader, run: Callable[[ModelSpec], T], *,
                       said: list[str]) -> tuple[T, ModelSpec]:
    """``run`` on SPEC built for an estimate ([Note: building for an estimate] in
    ``autopipe.spec``); where that build has weights after all (``load`` says why), or
    ``run`` fails on it, on a build with weights, with a note on stderr saying why (once:
    ``said`` holds what was said).

    Returns:
        What ``run`` returned, and the spec it ran on.
    """
    spec: ModelSpec | None
    spec, why = load(True)
    if why is None:
        try:
            return run(spec), spec
        except AutopipeError as e:
            # dropped before the build with weights, not kept beside it
            why, spec = f"estimating it on the meta device failed: {e.message}", None
    if not said:
        print(f"note: {where} is built with weights, which the estimate does not read, "
              f"as {why}", file=sys.stderr)
        said.append(why)
    if spec is None:
        spec = load(False)[0]
    return run(spec), spec


def traced_on(model: nn.Module) -> str:
    """The device type a model's graph is traced on: its parameters' (``meta`` or real)."""
    devices = {p.device.type for p in model.parameters()}
    return "meta" if "meta" in devices else ",".join(sorted(devices)) or "cpu"


def build_record(spec: str, spec_args: list[str], model: nn.Module) -> dict[str, Any]:
    """What ``Profile.meta["build"]`` keeps of the build a profile was made from: SPEC, the
    ``--spec-arg`` items and the device the model was traced on."""
    return {"spec": spec, "spec_args": list(spec_args), "traced_on": traced_on(model)}


def explain_mismatch(e: PlanMismatchError, profile: Profile, path: str, here: dict[str, Any]
                     ) -> PlanMismatchError:
    """``e`` (a ``--profile`` that does not fit this build, ``here``: its ``build_record``),
    naming how the two builds differ where the profile recorded its own."""
    made = profile.meta.get("build")
    if not isinstance(made, dict):
        return e
    theirs = [str(a) for a in made.get("spec_args", [])]
    spec_args = " ".join(f"--spec-arg {a}" for a in theirs) or "no --spec-arg"
    differ = []
    if made.get("spec") != here["spec"]:
        differ.append(f"it was made from {made.get('spec')}, this is {here['spec']}")
    if parse_spec_args(theirs) != parse_spec_args(here["spec_args"]):
        mine = " ".join(f"--spec-arg {a}" for a in here["spec_args"]) or "none"
        differ.append(f"it was made with {spec_args}, this command has {mine}")
    if made.get("traced_on") != here["traced_on"]:
        differ.append(f"it was traced on {made.get('traced_on')}, this build on {here['traced_on']} "
                      f"(a model traced on the meta device can have other nodes: attention's "
                      f"output strides differ there, adding `contiguous` copies)")
    if not differ:
        return e
    return PlanMismatchError(
        f"{path}: {e.message}: {'; '.join(differ)}",
        hint=f"give plan the SPEC and knobs `autopipe profile` had ({made.get('spec')} with "
             f"{spec_args}), or profile this build again")
