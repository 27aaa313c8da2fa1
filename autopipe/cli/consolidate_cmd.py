"""`autopipe consolidate`: a pipeline checkpoint as the unsplit model's state dict, in one file."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    p: argparse.ArgumentParser = sub.add_parser(
        "consolidate", help="write a checkpoint of `autopipe train --save` as one state dict file",
        description="Read the newest complete checkpoint in DIR (written by `autopipe train --save DIR`, "
                    "or a checkpoint folder DIR/step-NNNNNN) and write the unsplit model's state dict, "
                    "keyed as the original module's state_dict(), so that "
                    "model.load_state_dict(..., strict=True) takes it. One process; no GPU needed.")
    p.add_argument("dir", metavar="DIR", help="checkpoint directory")
    p.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="model.safetensors, or model.pt (torch.save)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the subcommand."""
    from autopipe._jsonio import check_writable
    from autopipe._units import format_size
    from autopipe.runtime.consolidate import check_format, consolidate, write_state_dict

    check_writable(args.output)
    check_format(args.output)
    state, info = consolidate(args.dir, note=lambda line: print(f"note: {line}", file=sys.stderr, flush=True))
    write_state_dict(state, args.output)
    size = sum(t.numel() * t.element_size() for t in state.values())
    print(f"wrote {args.output}: {len(state)} tensors, {format_size(size)}, from {info.path} "
          f"(step {info.step}, saved by {info.world_size} ranks)")
    return 0
