"""The ``autopipe`` command: argparse subcommands and the one error handler."""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from collections.abc import Sequence

from autopipe._version import __version__
from autopipe.errors import AutopipeError

# subcommand name → module under autopipe.cli that defines add_parser() and run()
SUBCOMMANDS = {
    "profile": "autopipe.cli.profile_cmd",
    "plan": "autopipe.cli.plan_cmd",
    "show": "autopipe.cli.show_cmd",
    "train": "autopipe.cli.train_cmd",
    "consolidate": "autopipe.cli.consolidate_cmd",
    "check": "autopipe.cli.check_cmd",
    "export": "autopipe.cli.export_cmd",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser, one subparser per subcommand; with ``only``, that subcommand's alone.

    ``main`` builds only the command it runs: each command's module imports what its
    options need, and the planner's (PuLP, HiGHS, the profilers; ~10 MiB) is host memory
    that every ``autopipe train`` rank would otherwise hold to its end.
    """
    parser = argparse.ArgumentParser(
        prog="autopipe",
        description="Automatic pipeline-parallel partitioning and planning for PyTorch.")
    parser.add_argument("--version", action="version", version=f"autopipe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module in SUBCOMMANDS.items():
        if only is None or name == only:
            importlib.import_module(module).add_parser(sub)
    return parser


TRACING = ("profile", "plan", "train", "check")
"""Subcommands that trace a spec's model: they run under one hash seed ([Note: one hash seed])."""


def pin_hash_seed() -> None:
    """Re-run this process with ``PYTHONHASHSEED=0`` unless the environment sets a seed itself.

    # [Note: one hash seed]
    A model whose forward iterates a ``set`` of strings (ModernBERT computes its rotary
    tables ``for layer_type in set(config.layer_types)``) traces its nodes in an order
    that follows Python's string hashes, which every process draws at random. A plan
    made by one process then names another graph than the one a rank traces, and the
    rank refuses it (the fingerprint differs). The seed is fixed only when the
    interpreter starts, so the tracing commands start again, the same command line with
    ``PYTHONHASHSEED=0``, before they trace; the ranks ``autopipe train --launch``
    starts inherit it. A seed the user set, ``random`` included, is kept.
    """
    argv = getattr(sys, "orig_argv", None)
    if "PYTHONHASHSEED" in os.environ or os.name != "posix" or not argv:
        return
    os.environ["PYTHONHASHSEED"] = "0"
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(sys.executable, argv)
    except OSError:  # cannot start again: trace under this process's seed
        del os.environ["PYTHONHASHSEED"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 a check failed, 2 bad input).

    Run as a program (``argv`` None), a tracing command first fixes the hash seed
    ([Note: one hash seed]); called with ``argv``, as tests do, it runs as it is.
    """
    if argv is None and sys.argv[1:2] and sys.argv[1] in TRACING:
        pin_hash_seed()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv[0] if argv and argv[0] in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    try:
        code: int = args.run(args)
        sys.stdout.flush()  # a reader that went away shows here, not at interpreter exit
    except BrokenPipeError:
        return _closed_pipe()
    except AutopipeError as e:
        print(f"autopipe {args.command}: error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"  hint: {e.hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("autopipe: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        if e.filename is None:  # not a file's problem: a bug to see whole
            raise
        print(f"autopipe {args.command}: error: {_file_error(e)}", file=sys.stderr)
        print("  hint: check the path: its folder must exist and be writable, on a file system "
              "with room", file=sys.stderr)
        return 2
    return code


def _file_error(e: OSError) -> str:
    """``PATH: reason`` for a file the command could not read or write, naming the file asked
    for rather than the temp file beside it that ``atomic_output`` writes first
    (``/proc/.x.safetensors.k2j4_9ab.tmp`` is ``/proc/x.safetensors``)."""
    path = os.fsdecode(e.filename)
    head, name = os.path.split(path)
    temp = re.fullmatch(r"\.(.+)\.[A-Za-z0-9_]+\.tmp", name)
    if temp:
        path = os.path.join(head, temp.group(1))
    return f"{path}: {e.strerror or type(e).__name__}"


def _closed_pipe() -> int:
    """``autopipe show plan.json | head -1``: the reader closed the pipe; stop quietly.

    Python would flush what is left in stdout's buffer at exit and print the
    BrokenPipeError then, so stdout is pointed at /dev/null first. The exit code is
    the one a shell reports for a process that SIGPIPE ended (128 + 13).
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 141


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
