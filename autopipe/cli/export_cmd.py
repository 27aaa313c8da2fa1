"""`autopipe export`: a layer-granular plan in the terms of torchtitan, DeepSpeed or Megatron-LM."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from autopipe._jsonio import check_writable, write_json_atomic
from autopipe.cli._common import load_plan
from autopipe.export import FORMATS, export_plan
from autopipe.profile.profile import Profile


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    p: argparse.ArgumentParser = sub.add_parser(
        "export", help="write a plan's stages for torchtitan, DeepSpeed or Megatron-LM",
        description="Write PLAN's stages as torchtitan's module FQNs per model part, DeepSpeed's "
                    "PipelineModule parts or Megatron-LM's layers per stage. The plan must give "
                    "each stage whole layers: make it with `autopipe plan ... --granularity layer`.")
    p.add_argument("plan", metavar="PLAN.json", help="a plan made with --granularity layer")
    p.add_argument("--format", required=True, choices=sorted(FORMATS), help="the engine to export to")
    p.add_argument("--profile", metavar="PROFILE.json",
                   help="the profile the plan was made from, for a plan made before 2026-12-08: "
                        "torchtitan's and DeepSpeed's parts then hold every parameter, those no node "
                        "reads too (newer plans record what this needs)")
    p.add_argument("-o", "--output", metavar="FILE.json", help="write here (default: stdout)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the subcommand."""
    if args.output:
        check_writable(args.output)
    profile = Profile.load(args.profile) if args.profile else None
    data = export_plan(load_plan(args.plan, as_written=True), args.format, profile)
    for note in data.get("notes", ()):
        print(f"note: {note}", file=sys.stderr)
    if not args.output:
        print(json.dumps(data, indent=1))
        return 0
    write_json_atomic(args.output, data)
    per = " | ".join(map(str, data["plan"]["layers_per_stage"]))
    print(f"wrote {args.output}: {args.format}, {len(data['plan']['layers_per_stage'])} stages, "
          f"layers per stage {per}", file=sys.stderr)
    return 0
