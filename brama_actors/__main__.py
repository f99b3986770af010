"""The command line: ``python -m brama_actors demo`` and ``python -m brama_actors watch``."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

import brama_actors
from brama_actors._cli import _demo, _watch


def build_parser() -> argparse.ArgumentParser:
    """The parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="python -m brama_actors",
        description="brama_actors: circuit breakers as Pykka actors.")
    parser.add_argument("--version", action="version",
                        version=f"brama_actors {brama_actors.__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _demo.add_parser(subparsers)
    _watch.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 0
    return code


if __name__ == "__main__":
    try:
        exit_code = main()
    except KeyboardInterrupt:  # a Ctrl-C just after the command returned
        exit_code = 0
    # The command is done. A late Ctrl-C (a double press) would otherwise kill the
    # interpreter while it exits and turn a clean exit into "killed by SIGINT".
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise SystemExit(exit_code)
