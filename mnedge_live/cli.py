"""The ``mnedge`` command: parses arguments and hands over to one module per subcommand.

Subcommands live in :mod:`mnedge_live.commands`; each module there provides
``add_parser(subparsers)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

#: Subcommand name -> module under mnedge_live.commands.
SUBCOMMANDS = {
    "predict": "predict",
    "live": "live",
    "demo": "demo",
    "models": "models",
    "watch": "watch",
    "replay": "replay",
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every available subcommand."""
    parser = argparse.ArgumentParser(prog="mnedge", description="Mn L2,3 valence readout from XAS/EELS spectra.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS.values():
        try:
            mod = importlib.import_module(f"mnedge_live.commands.{module}")
        except ModuleNotFoundError as exc:
            if exc.name == f"mnedge_live.commands.{module}":
                continue  # subcommand not part of this build
            raise
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mnedge`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.run(args) or 0)
    except BrokenPipeError:
        # The reader went away (``mnedge predict ... | head``): stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
