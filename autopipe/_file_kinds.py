"""What each of autopipe's JSON files is, so a file of one kind passed where another is
expected is named for what it is, with what to pass instead."""

from __future__ import annotations

_KINDS: dict[str, tuple[str, str]] = {
    "autopipe.plan/1": ("a plan", "`autopipe plan SPEC ... -o PLAN.json`"),
    "autopipe.profile/1": ("a profile", "`autopipe profile SPEC -o PROFILE.json`"),
    "autopipe.golden/1": ("a golden record of partition quality", "`autopipe check --golden FILE --refresh`"),
    "autopipe.device/1": ("a device spec", "hand (see docs/profiling.md)"),
    "autopipe.export/1": ("an export of a plan for another engine", "`autopipe export PLAN.json -o FILE`"),
    "autopipe.trace/1": ("a Chrome trace of a plan's step", "`autopipe show PLAN.json --trace FILE`"),
    "autopipe.runtime-costs/1": ("a record of the runtime's measured costs",
                                 "`autopipe show PLAN.json --runtime-costs`"),
    "autopipe.checkpoint/1": ("a checkpoint's metadata", "`autopipe train ... --save DIR`"),
}
"""Per schema: what the file is, and what writes it."""

_USES: dict[str, str] = {
    "autopipe.plan/1": "pass it where a plan goes: `autopipe show|check|export PLAN.json`, "
                       "`autopipe train SPEC --plan PLAN.json`",
    "autopipe.profile/1": "plan with it: `autopipe plan SPEC --profile {path} --stages N -o PLAN.json`, "
                          "then pass PLAN.json",
    "autopipe.golden/1": "check it with `autopipe check --golden {path}`",
    "autopipe.device/1": "pass it as `--device-spec {path}`",
    "autopipe.export/1": "pass the plan it was exported from",
    "autopipe.trace/1": "open it in ui.perfetto.dev, and pass the plan it was drawn from",
    "autopipe.checkpoint/1": "pass its folder to `autopipe train ... --resume DIR` or `autopipe consolidate DIR`",
}
"""Per schema: what to do with such a file instead."""


def wrong_kind(path: str, found: object, expected: str) -> tuple[str, str] | None:
    """The message and the hint for the file ``path`` of schema ``found`` passed where a file of
    schema ``expected`` goes; None where ``found`` is no kind autopipe writes."""
    if not isinstance(found, str) or found not in _KINDS or expected not in _KINDS:
        return None
    what, _ = _KINDS[found]
    wanted, made_by = _KINDS[expected]
    use = _USES.get(found)
    hint = f"pass {wanted}, written by {made_by}" + (f"; {use.format(path=path)}" if use else "")
    return (f"{path}: schema is {found!r}, expected {expected!r}: it is {what}, not {wanted}", hint)
