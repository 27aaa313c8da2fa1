"""`autopipe plan`."""

from __future__ import annotations

import argparse
from typing import Any

from autopipe.errors import AutopipeError


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    p: argparse.ArgumentParser = sub.add_parser("plan", help="(being built)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the subcommand."""
    raise AutopipeError("`autopipe plan` is not available in this build", hint="see the README")
