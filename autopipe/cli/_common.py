"""Argument helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import os
from typing import Any

from autopipe._jsonio import read_json
from autopipe.errors import AutopipeError, PlanError
from autopipe.plan_format import SCHEMA, Plan, check_as_written


def add_spec_args(p: argparse.ArgumentParser) -> None:
    """``SPEC`` plus repeatable ``--spec-arg key=value`` knobs for the build function."""
    p.add_argument("spec", metavar="SPEC",
                   help="path/to/file.py:function or package.module:function returning a ModelSpec")
    p.add_argument("--spec-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="keyword argument for the build function (repeatable), e.g. n_layer=8")


def plan_knobs(knobs: dict[str, Any], plan: Plan) -> dict[str, Any]:
    """``knobs`` with ``batch_size`` set to the micro-batch size ``plan`` was made for.

    A plan made with ``--batch-size`` records its micro-batch size; the spec must be
    built for it (its ``batch_size`` knob), unless the knob is given explicitly.
    """
    size = plan.options.get("microbatch_size")
    if isinstance(size, int) and "batch_size" not in knobs:
        return {**knobs, "batch_size": size}
    return knobs


def load_plan(path: str, *, as_written: bool = False) -> Plan:
    """Read a plan file and check it as ``autopipe train`` does, as far as the file alone can
    show (``autopipe.runtime.validate.validate_plan``); errors name the file.

    Args:
        path: the plan file.
        as_written: also refuse a plan whose stages or predictions differ from what
            ``autopipe plan`` wrote ([Note: a plan edited by hand]): for the commands that
            present or compare its predictions.
    """
    from autopipe.runtime.validate import validate_plan

    data = read_json(path, SCHEMA, PlanError)
    plan = Plan.from_json(data, source=path)
    try:
        validate_plan(plan)
    except PlanError as e:
        raise type(e)(f"{path}: {e.message}", hint=e.hint) from None
    if as_written:
        check_as_written(data, path)
    return plan


def reject_flag(given: bool, flag: str, applies: str, hint: str) -> None:
    """Flags that do not apply to the chosen mode are an error, not silently ignored.

    Args:
        given: whether the user gave ``flag`` where it does not apply.
        flag: the flag, as typed (``--device-spec``).
        applies: when it does apply (``"with --device meta"``).
        hint: the fix.

    Raises:
        AutopipeError: when ``given``.
    """
    if given:
        raise AutopipeError(f"{flag} applies only {applies}", hint=hint)


def profile_record(path: str) -> dict[str, str]:
    """What a plan made from the saved profile at ``path`` records of it: its file name and
    the SHA-256 of its bytes (16 hex digits), so ``check --spec`` can re-plan on the same costs."""
    import hashlib

    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    return {"profile_file": os.path.basename(path), "profile_sha256": digest}
