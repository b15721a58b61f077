"""``tomo-streamer simulate``: act as a detector, stream (or save) a simulated scan."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from streamer.cli.options import (
    add_command,
    add_send_options,
    add_simulation_options,
    add_source_endpoint_options,
)
from streamer.cli.sending import simulated_scan, source_endpoint, stream_scan

EXAMPLE = (
    "examples:\n"
    "  tomo-streamer simulate --rows 64 --cols 256 --projections 720 --rate 200\n"
    "  tomo-streamer simulate --range 360 --zingers 2 --dead-column 40 --save scan.nxs"
)


def add_parser(commands: Any) -> None:
    """Register ``tomo-streamer simulate`` and its options."""
    parser = add_command(commands, EXAMPLE,
                         "simulate", "Act as a detector: stream a simulated phantom scan.",
                         run)
    add_simulation_options(parser, projections=360)
    add_send_options(parser)
    add_source_endpoint_options(parser)
    parser.add_argument("--save", type=Path, metavar="FILE.nxs",
                        help="write the scan as an NXtomo file instead of streaming it")


def run(args: argparse.Namespace) -> int:
    """``tomo-streamer simulate`` with the parsed ``args``; returns the exit status."""
    if args.save is None:
        source_endpoint(args)  # a bad address is refused before the scan is made
    scan = simulated_scan(args)
    if args.save is not None:
        from streamer.sources.formats import write_nxtomo

        write_nxtomo(args.save, scan)
        print(f"wrote {scan.layout.frames} frames to {args.save}")
        return 0
    return stream_scan(scan, args)
