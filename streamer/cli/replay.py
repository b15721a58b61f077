"""``tomo-streamer replay``: stream a stored scan or a byte-exact capture."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import zmq

from streamer.cli.options import (
    add_command,
    add_load_options,
    add_send_options,
    add_source_endpoint_options,
)
from streamer.cli.sending import source_endpoint, source_socket, stream_scan
from streamer.cli.shared import check_scan_argument, load_options_from, stop_on_signal

EXAMPLE = (
    "examples:\n"
    "  tomo-streamer replay tooth.h5 --block 8\n"
    "  tomo-streamer replay k11-18014.nxs --rows 5:15 --order shuffle\n"
    "  tomo-streamer replay tiffs/ --darks dark.tiff --flats flat.tiff \\\n"
    "      --angles-path 24737_processed.nxs:/entry/input_data/tomo/rotation_angle\n"
    "  tomo-streamer replay sinogram.tif --angles 0,360,459\n"
    "  tomo-streamer replay RealDataDend.mat --normalised --scale 0.001\n"
    "  tomo-streamer replay capture.h5 --realtime"
)


def add_parser(commands: Any) -> None:
    """Register ``tomo-streamer replay`` and its options."""
    parser = add_command(commands, EXAMPLE,
                         "replay", "Stream a stored scan (NeXus, data-exchange, TIFF, sinogram, "
                         "capture).", run)
    parser.add_argument("scan", type=Path, metavar="SCAN",
                        help="a scan file, a folder of TIFFs or a quoted glob such as "
                        "'tiffs/raw_*.tiff'")
    add_load_options(parser)
    add_send_options(parser)
    add_source_endpoint_options(parser)
    parser.add_argument("--realtime", action="store_true",
                        help="captures only: keep the recorded gaps between messages")


def run(args: argparse.Namespace) -> int:
    """``tomo-streamer replay`` with the parsed ``args``; returns the exit status."""
    check_scan_argument(args.scan)
    source_endpoint(args)
    from streamer.sources.capture import is_capture, replay_capture

    if args.scan.is_file() and is_capture(args.scan):
        with zmq.Context() as context, stop_on_signal() as stop:
            socket = source_socket(context, args)
            try:
                sent = replay_capture(socket, args.scan, realtime=args.realtime, stop=stop)
            finally:
                socket.close(linger=0 if stop.is_set() else None)
        if stop.is_set():
            print(f"STOPPED after replaying {sent} messages of {args.scan} (interrupted; "
                  "the consumer did not get the rest)")
            return 130
        print(f"replayed {sent} messages from {args.scan}")
        return 0
    from streamer.sources.formats import open_scan

    reader = open_scan(args.scan, load_options_from(args))
    try:
        return stream_scan(reader, args)
    finally:
        reader.close()
