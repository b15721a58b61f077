"""The ``tomo-streamer`` command line: parse, then call the library.

One module per command (``streamer.cli.demo``, ``…run``, ``…recon``, …), each with
``add_parser(commands)`` and ``run(args)``; :mod:`streamer.cli.options` holds the options
they share. User errors (bad options, unreadable scans, protocol or transport problems)
print one ``error: …`` line without a traceback and exit with status 2. Commands that
account for scans exit with 1 when a scan ended incomplete, so scripts can tell.

Everything heavier than NumPy and ZeroMQ (the stage registry with algotom and SciPy,
h5py, the feed, the viewer) is imported inside the command that needs it, so that
``--help`` and a mistake on the command line answer about as fast as ``import numpy``
(tests/test_cli_startup.py).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from streamer.cli import check, demo, ingest, recon, record, replay, run, simulate, view
from streamer.errors import StreamerError

#: The commands, in the order ``--help`` lists them.
COMMANDS = (demo, simulate, replay, check, run, recon, record, ingest, view)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tomo-streamer`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.handler(args)
        return result
    except StreamerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    """The ``tomo-streamer`` parser: one sub-parser per module of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="tomo-streamer",
        description="Streaming processor for parallel-beam X-ray tomography.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(commands)
    return parser
