"""``tomo-streamer record``: capture a live stream byte-exactly to HDF5."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import zmq

from streamer.cli.options import add_command, add_consumer_endpoint_options
from streamer.cli.receiving import close_consumer, consumer_socket
from streamer.cli.shared import stop_on_signal
from streamer.wire.transport import DEFAULT_SOURCE_ADDRESS

EXAMPLE = "example:\n  tomo-streamer record --from tcp://127.0.0.1:5555 -o capture.h5"


def add_parser(commands: Any) -> None:
    """Register ``tomo-streamer record`` and its options."""
    parser = add_command(commands, EXAMPLE,
                         "record", "Capture a live stream byte-exactly to an HDF5 file.", run)
    add_consumer_endpoint_options(parser)
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="CAPTURE.h5")
    parser.add_argument("--scans", type=int, default=1,
                        help="stop after this many scans ended (0: until idle/interrupted)")
    parser.add_argument("--idle-timeout", type=float, default=None, metavar="S",
                        help="stop after S seconds without a message")


def run(args: argparse.Namespace) -> int:
    """``tomo-streamer record`` with the parsed ``args``; returns the exit status."""
    from streamer.sources.capture import record

    with zmq.Context() as context, stop_on_signal() as stop:
        socket, gate = consumer_socket(context, args, None, announce="record")
        try:
            summary = record(
                socket, args.output, source=args.listen or args.from_address or
                DEFAULT_SOURCE_ADDRESS, scans=args.scans or None,
                idle_timeout_s=args.idle_timeout, stop=stop,
            )
        finally:
            close_consumer(socket, gate)
    print(
        f"recorded {summary.messages} messages ({summary.bytes / 1e6:.1f} MB, "
        f"{summary.scans_closed} scans ended) to {summary.path}"
    )
    return 0
