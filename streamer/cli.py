"""The ``tomo-streamer`` command line: parse, then call the library.

User errors (bad options, unreadable scans, protocol or transport problems) print one
``error: …`` line without a traceback and exit with status 2. Commands that account
for scans exit with 1 when a scan ended incomplete, so scripts can tell.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zmq

from streamer.errors import ConfigError, SinkError, StageError, StreamerError, TransportError
from streamer.exchange import RankLink, launched_with_ranks
from streamer.ingest.peers import DEFAULT_MAX_PEERS, PeerGate, PeerPolicy
from streamer.progress import Progress
from streamer.protocol import Limits
from streamer.shipped import pipeline_file
from streamer.transport import DEFAULT_SOURCE_ADDRESS, Endpoint, bound_address, open_socket

# Everything heavier (the stage registry with algotom and SciPy, h5py, the feed, the
# viewer) is imported by the command that needs it, so that ``--help`` and a mistake on
# the command line answer about as fast as ``import numpy`` (tests/test_cli_startup.py).
if TYPE_CHECKING:
    from streamer.feed import LiveFeed
    from streamer.ingest.accounting import Rejections, ScanReport
    from streamer.ingest.service import IngestSettings
    from streamer.live import ScanOutput
    from streamer.recon import ReconSettings
    from streamer.sources.formats import LoadOptions
    from streamer.sources.sender import SendOptions
    from streamer.sources.simulate import SimulatedScan

EXAMPLES = {
    "demo": "example:\n  tomo-streamer demo --projections 360 --order shuffle",
    "simulate": (
        "examples:\n"
        "  tomo-streamer simulate --rows 64 --cols 256 --projections 720 --rate 200\n"
        "  tomo-streamer simulate --range 360 --zingers 2 --dead-column 40 --save scan.nxs"
    ),
    "replay": (
        "examples:\n"
        "  tomo-streamer replay tooth.h5 --block 8\n"
        "  tomo-streamer replay k11-18014.nxs --rows 5:15 --order shuffle\n"
        "  tomo-streamer replay tiffs/ --darks dark.tiff --flats flat.tiff \\\n"
        "      --angles-path 24737_processed.nxs:/entry/input_data/tomo/rotation_angle\n"
        "  tomo-streamer replay sinogram.tif --angles 0,360,459\n"
        "  tomo-streamer replay RealDataDend.mat --normalised --scale 0.001\n"
        "  tomo-streamer replay capture.h5 --realtime"
    ),
    "check": (
        "examples:\n"
        "  tomo-streamer check configs/standard.yaml\n"
        "  tomo-streamer check standard --frame 135x160 --projections 91   # a shipped one\n"
        "  tomo-streamer check configs/httomo_standard.yaml --frame 2048x2560 --projections 3600 "
        "--memory 16"
    ),
    "run": (
        "examples:\n"
        "  tomo-streamer run configs/standard.yaml --from tcp://127.0.0.1:5555 --out volumes\n"
        "  tomo-streamer run configs/standard.yaml --listen tcp://127.0.0.1:6000 --scans 1\n"
        "  mpiexec -n 4 tomo-streamer run configs/standard.yaml --from tcp://127.0.0.1:5555"
        "   # a band of rows per rank"
    ),
    "recon": (
        "examples:\n"
        "  tomo-streamer recon tooth.h5 -o tooth_recon.h5\n"
        "  tomo-streamer recon k11-18014.nxs -o diad.h5 --center 12.5 --rows 5:15\n"
        "  tomo-streamer recon scan.nxs -o out.h5 --pipeline configs/standard.yaml "
        "--center auto\n"
        "  mpiexec -n 4 tomo-streamer recon tooth.h5 -o tooth_recon.h5   # parts + master file"
    ),
    "record": "example:\n  tomo-streamer record --from tcp://127.0.0.1:5555 -o capture.h5",
    "ingest": (
        "examples:\n"
        "  tomo-streamer ingest --from tcp://127.0.0.1:5555 --scans 1 --report-dir reports\n"
        "  mpiexec -n 4 tomo-streamer ingest --from tcp://127.0.0.1:5555   # every rank pulls"
    ),
    "view": (
        "examples:\n"
        "  tomo-streamer demo --rate 60 --feed tcp://127.0.0.1:5600 --control "
        "tcp://127.0.0.1:5601 --hold 600\n"
        "  tomo-streamer view --feed tcp://127.0.0.1:5600 --control tcp://127.0.0.1:5601   "
        "# then open http://127.0.0.1:8765/"
    ),
}


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
    parser = argparse.ArgumentParser(
        prog="tomo-streamer",
        description="Streaming processor for parallel-beam X-ray tomography.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, handler: Callable[[argparse.Namespace], int]) -> Any:
        sub = commands.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=EXAMPLES[name],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(handler=handler)
        return sub

    demo = command("demo", "Stream a simulated scan through ingest and print the accounting.",
                   _run_demo)
    _simulation_options(demo, projections=180)
    _send_options(demo)
    demo.add_argument("--out", type=Path, help="folder for the run report (default: a temp dir)")
    _feed_options(demo)
    demo.add_argument("--hold", type=float, default=0.0, metavar="S",
                      help="with --feed: keep the feed up S s after the scan, for viewers")

    simulate = command("simulate", "Act as a detector: stream a simulated phantom scan.",
                       _run_simulate)
    _simulation_options(simulate, projections=360)
    _send_options(simulate)
    _source_endpoint_options(simulate)
    simulate.add_argument("--save", type=Path, metavar="FILE.nxs",
                          help="write the scan as an NXtomo file instead of streaming it")

    replay = command("replay", "Stream a stored scan (NeXus, data-exchange, TIFF, sinogram, "
                     "capture).", _run_replay)
    replay.add_argument("scan", type=Path, metavar="SCAN",
                        help="a scan file, a folder of TIFFs or a quoted glob such as "
                        "'tiffs/raw_*.tiff'")
    _load_options(replay)
    _send_options(replay)
    _source_endpoint_options(replay)
    replay.add_argument("--realtime", action="store_true",
                        help="captures only: keep the recorded gaps between messages")

    check = command("check", "Validate a YAML pipeline and print its memory plan (no data "
                    "needed).", _run_check)
    check.add_argument("pipeline", type=Path, metavar="PIPELINE.yaml|NAME",
                       help="a YAML file, or the name of a shipped pipeline (standard, …)")
    check.add_argument("--frame", type=_frame_shape, default=(2048, 2048), metavar="ROWSxCOLS",
                       help="detector frame to plan for (default 2048x2048)")
    check.add_argument("--projections", type=int, default=1800,
                       help="projections in the scan (default 1800)")
    check.add_argument("--dtype", choices=("uint8", "uint16", "uint32", "float32"),
                       default="uint16", help="pixel type of the incoming frames")
    check.add_argument("--memory", type=float, default=None, metavar="GiB",
                       help="host memory budget (default: half of this machine's memory)")
    check.add_argument("--device", nargs="?", const="auto", default=None,
                       metavar="GiB|auto", help="also plan for a CUDA device of this size, "
                       "or the one cupy detects (auto), as --device gpu would run")

    run = command("run", "The service: receive scans, correct frames as they arrive, "
                  "reconstruct each scan when it closes, write volumes and reports.", _run_run)
    run.add_argument("pipeline", type=Path, metavar="PIPELINE.yaml|NAME",
                     help="a YAML file, or the name of a shipped pipeline (standard, …)")
    _consumer_endpoint_options(run)
    run.add_argument("--out", type=Path, default=Path("volumes"),
                     help="one <scan>.h5 per scan here (default: volumes)")
    run.add_argument("--center", type=_center, default=None, metavar="VALUE|auto",
                     help="CoR for every scan (default: the pipeline's, else auto)")
    run.add_argument("--scans", type=int, default=0,
                     help="stop after this many scans (0: serve until interrupted)")
    run.add_argument("--idle-timeout", type=float, default=30.0, metavar="S",
                     help="close a scan as incomplete after S s without messages")
    run.add_argument("--report-dir", type=Path, default=None,
                     help="JSON run reports here (default: the --out folder)")
    run.add_argument("--block", type=int, default=None,
                     help="projections per block (default: from the memory plan)")
    run.add_argument("--sinogram-block", type=int, default=None,
                     help="slices per band (default: from the memory plan)")
    run.add_argument("--memory", type=float, default=None, metavar="GiB",
                     help="host memory budget for blocks (default: half of this machine's)")
    _format_options(run, "write TIFF stacks (same as --format tiff)")
    _device_option(run)
    run.add_argument("--quiet", action="store_true",
                     help="no progress line, no scan and plan lines (warnings still show)")
    _limit_options(run)
    _feed_options(run)

    recon = command("recon", "Reconstruct a stored scan (one process, or a band of rows per "
                    "MPI rank): replay + pipeline + reconstruction, slices to HDF5 (or "
                    "TIFF).", _run_recon)
    recon.add_argument("scan", type=Path, metavar="SCAN",
                       help="a scan file, a folder of TIFFs or a quoted glob such as "
                       "'tiffs/raw_*.tiff'")
    recon.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.h5",
                       help="HDF5 file (or folder with --tiff)")
    recon.add_argument("--pipeline", type=Path, default=None, metavar="PIPELINE.yaml|NAME",
                       help="a YAML file or a shipped pipeline's name (default: flat/dark "
                       "(or air) correction and -log, then fourier_fbp)")
    recon.add_argument("--center", type=_center, default=None, metavar="VALUE|auto",
                       help="CoR, 0-based detector column; auto: Vo's method (default: the "
                       "pipeline's, else auto)")
    recon.add_argument("--block", type=int, default=None,
                       help="projections per block (default: from the memory plan)")
    recon.add_argument("--sinogram-block", type=int, default=None,
                       help="slices per band (default: from the memory plan)")
    recon.add_argument("--memory", type=float, default=None, metavar="GiB",
                       help="host memory budget for blocks (default: half of this machine's)")
    _format_options(recon, "write a TIFF stack (same as --format tiff; default: from the "
                    "output's suffix)")
    _device_option(recon)
    recon.add_argument("--overwrite", action="store_true", help="replace an existing output")
    recon.add_argument("--quiet", action="store_true",
                       help="no progress line, no scan and plan lines (warnings still show)")
    _load_options(recon)

    record = command("record", "Capture a live stream byte-exactly to an HDF5 file.", _run_record)
    _consumer_endpoint_options(record)
    record.add_argument("-o", "--output", type=Path, required=True, metavar="CAPTURE.h5")
    record.add_argument("--scans", type=int, default=1,
                        help="stop after this many scans ended (0: until idle/interrupted)")
    record.add_argument("--idle-timeout", type=float, default=None, metavar="S",
                        help="stop after S seconds without a message")

    ingest = command("ingest", "Receive scans, validate and account for every frame, write "
                     "a JSON report per scan.", _run_ingest)
    _consumer_endpoint_options(ingest)
    ingest.add_argument("--scans", type=int, default=0,
                        help="stop after this many scans (0: serve until interrupted)")
    ingest.add_argument("--idle-timeout", type=float, default=30.0, metavar="S",
                        help="close a scan as incomplete after S s without messages")
    ingest.add_argument("--report-dir", type=Path, default=Path("reports"))
    _limit_options(ingest)
    ingest.add_argument("--quiet", action="store_true", help="print nothing but errors")
    ingest.add_argument("--json", action="store_true", help="print each report as JSON")

    view = command("view", "Serve a web page that shows a live feed: previews, final slices, "
                   "cuts, counters, rates and a CoR check.", _run_view)
    view.add_argument("--feed", required=True, metavar="ADDR",
                      help="the feed's address (run/demo --feed prints it)")
    view.add_argument("--control", default=None, metavar="ADDR",
                      help="the feed's control address (CoR sweep, set the CoR, slices); "
                      "without it the page only watches")
    view.add_argument("--host", default="127.0.0.1", help="serve on this address")
    view.add_argument("--port", type=int, default=8765, help="HTTP port (0: any free one)")
    view.add_argument("--allow-remote", action="store_true",
                      help="allow a non-loopback --host")
    view.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                      help="a name or address the page may be opened by besides the loopback "
                      "ones (and, with --allow-remote, this machine's); repeatable")
    view.add_argument("--feed-token", default=None, metavar="TOKEN",
                      help="the feed's control token (default: $TOMO_STREAMER_FEED_TOKEN)")
    return parser


# --- option groups ---------------------------------------------------------------------


def _simulation_options(parser: argparse.ArgumentParser, *, projections: int) -> None:
    group = parser.add_argument_group("simulated detector")
    group.add_argument("--rows", type=int, default=32)
    group.add_argument("--cols", type=int, default=128)
    group.add_argument("--projections", type=int, default=projections)
    group.add_argument("--flats", type=int, default=20)
    group.add_argument("--darks", type=int, default=10)
    group.add_argument("--flats-at", choices=("start", "start_end"), default="start")
    group.add_argument("--range", type=int, choices=(180, 360), default=180, dest="scan_range")
    group.add_argument("--cor", type=float, default=None, metavar="PX",
                       help="axis position, 0-based detector column (default: centre)")
    group.add_argument("--zingers", type=float, default=0.0, metavar="PER_FRAME",
                       help="mean number of zingers per projection")
    group.add_argument("--dead-column", type=int, action="append", default=[])
    group.add_argument("--hot-column", type=int, action="append", default=[])
    group.add_argument("--dtype", choices=("uint16", "float32"), default="uint16")
    group.add_argument("--seed", type=int, default=0, help="noise seed")


def _send_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("streaming")
    group.add_argument("--block", type=int, default=16, help="frames per message")
    group.add_argument("--rate", type=float, default=None, metavar="FPS",
                       help="frames per second (default: as fast as the consumer takes them)")
    group.add_argument("--order", choices=("sequential", "shuffle", "interleave"),
                       default="sequential", help="block order (out-of-order testing)")
    group.add_argument("--order-seed", type=int, default=0)
    group.add_argument("--cannot-wait", action="store_true",
                       help="a detector that cannot be held back: drop (and count) frames "
                            "the consumer cannot take at once instead of waiting")
    group.add_argument("--scan-id", type=_scan_id, default=None,
                       help="the scan's id (letters, digits and ._:@+-; default: a new one)")


def _source_endpoint_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("where to send")
    where = group.add_mutually_exclusive_group()
    where.add_argument("--bind", default=None, metavar="ADDR",
                       help=f"bind a PUSH socket here (default {DEFAULT_SOURCE_ADDRESS})")
    where.add_argument("--connect", default=None, metavar="ADDR",
                       help="connect the PUSH socket to a consumer that listens")
    group.add_argument("--allow-remote", action="store_true",
                       help="allow binding a non-loopback address")
    group.add_argument("--send-timeout", type=float, default=60.0, metavar="S",
                       help="fail if no consumer takes a message for S seconds")
    group.add_argument("--hwm", type=int, default=16, help="send high-water mark (messages)")
    group.add_argument("--quiet", action="store_true",
                       help="no progress line (it is shown only on a terminal anyway)")


def _consumer_endpoint_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("where to receive from")
    where = group.add_mutually_exclusive_group()
    where.add_argument("--from", dest="from_address", default=None, metavar="ADDR",
                       help=f"connect to a source (default {DEFAULT_SOURCE_ADDRESS})")
    where.add_argument("--listen", default=None, metavar="ADDR",
                       help="bind here and let sources connect")
    group.add_argument("--allow-remote", action="store_true",
                       help="allow binding a non-loopback address")
    group.add_argument("--hwm", type=int, default=16, help="receive high-water mark (messages)")
    group.add_argument("--max-peers", type=int, default=DEFAULT_MAX_PEERS, metavar="N",
                       help="with --listen: admit at most N connected sources at once; "
                            "more are refused and counted (default %(default)s)")
    group.add_argument("--allow", action="append", default=[], metavar="IP[/BITS]",
                       help="with --listen: admit only sources from these addresses or "
                            "networks; repeatable (default: any that can reach the socket)")


def _format_options(parser: argparse.ArgumentParser, tiff_help: str) -> None:
    """``--output-format NAME`` (a sink of streamer.sinks.registry; ``--format`` is the
    input scan's format) and ``--tiff``, its alias."""
    parser.add_argument("--output-format", dest="output_format", default=None,
                        metavar="hdf5|tiff",
                        help="output format (default: from the output's suffix, else hdf5)")
    parser.add_argument("--tiff", dest="output_format", action="store_const", const="tiff",
                        help=tiff_help)


def _output_format(args: argparse.Namespace, output: Path | None) -> str:
    """The sink that writes ``output``: ``--output-format``/``--tiff``, else its suffix."""
    from streamer.sinks.registry import format_for

    return format_for(output, args.output_format)


def _limit_options(parser: argparse.ArgumentParser) -> None:
    defaults = Limits()
    group = parser.add_argument_group("limits (bytes)")
    group.add_argument("--max-header-bytes", type=int, default=defaults.max_header_bytes)
    group.add_argument("--max-frame-bytes", type=int, default=defaults.max_frame_bytes)
    group.add_argument("--max-message-bytes", type=int, default=defaults.max_message_bytes)
    group.add_argument("--max-metadata-bytes", type=int, default=defaults.max_metadata_bytes)
    group.add_argument("--max-frames-per-message", type=int,
                       default=defaults.max_frames_per_message)


def _load_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("reading the scan")
    group.add_argument("--format", default="auto",
                       choices=("auto", "nexus", "dxchange", "tiff", "mat", "sinogram-tif"))
    group.add_argument("--data-path", default=None, help="HDF5 dataset of the frames")
    group.add_argument("--image-key-path", default=None, help="HDF5 dataset of image_key")
    group.add_argument("--angles-path", default=None, metavar="[FILE:]DATASET",
                       help="angles (degrees unless the dataset says radians)")
    group.add_argument("--darks", nargs="+", default=[], metavar="FILE",
                       help="separate dark files (TIFF or FILE:DATASET)")
    group.add_argument("--flats", nargs="+", default=[], metavar="FILE",
                       help="separate flat files (TIFF or FILE:DATASET)")
    group.add_argument("--rows", type=_row_range, default=None, metavar="A:B",
                       help="detector rows A..B-1 only (0-based)")
    group.add_argument("--angles", type=_angle_range, default=None, metavar="START,STOP,COUNT",
                       help="angles in degrees, endpoint included, for files without angles")
    counts = group.add_mutually_exclusive_group()
    counts.add_argument("--normalised", action="store_true",
                        help="data are already -log attenuation: skip normalisation")
    counts.add_argument("--counts", action="store_true",
                        help="data are detector counts even where they look like "
                        "attenuation (a single sinogram without flats is checked)")
    group.add_argument("--scale", type=float, default=None,
                       help="multiply pixel values by this factor (output float32)")


def _scan_id(text: str) -> str:
    import re

    from streamer.protocol import SCAN_ID_PATTERN

    if len(text) > 128 or not re.fullmatch(SCAN_ID_PATTERN, text):
        raise argparse.ArgumentTypeError(
            "expected 1-128 characters, a letter or digit first, then letters, digits "
            f"and ._:@+- only, got {text!r}")
    return text


def _row_range(text: str) -> tuple[int, int]:
    first, sep, last = text.partition(":")
    try:
        if not sep:
            raise ValueError
        start, stop = int(first), int(last)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected A:B (two integers), got {text!r}") from None
    if not 0 <= start < stop:
        raise argparse.ArgumentTypeError(f"expected 0 <= A < B, got {text!r}")
    return start, stop


def _center(text: str) -> float | str:
    if text == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a detector column (number) or 'auto', got {text!r}"
        ) from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite column, got {text!r}")
    return value


def _frame_shape(text: str) -> tuple[int, int]:
    rows, sep, cols = text.lower().partition("x")
    if not sep or not rows.isdigit() or not cols.isdigit() or int(rows) < 1 or int(cols) < 1:
        raise argparse.ArgumentTypeError(f"expected ROWSxCOLS (positive integers), got {text!r}")
    return int(rows), int(cols)


def _angle_range(text: str) -> tuple[float, float, int]:
    pieces = text.split(",")
    try:
        if len(pieces) != 3:
            raise ValueError
        start, stop, count = float(pieces[0]), float(pieces[1]), int(pieces[2])
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected START,STOP,COUNT (degrees, degrees, integer), got {text!r}"
        ) from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"COUNT must be >= 1, got {count}")
    return start, stop, count


# --- helpers -----------------------------------------------------------------------------


@contextmanager
def _stop_on_signal() -> Iterator[threading.Event]:
    """A stop event set by SIGINT/SIGTERM so services shut down cleanly (reports written)."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _source_endpoint(args: argparse.Namespace) -> Endpoint:
    """Where ``simulate``/``replay`` send (checked before any scan is read)."""
    if args.connect:
        return Endpoint.parse(args.connect, bind=False)
    return Endpoint.parse(args.bind or DEFAULT_SOURCE_ADDRESS, bind=True)


def _source_socket(context: zmq.Context[zmq.Socket[bytes]], args: argparse.Namespace) -> Any:
    """The PUSH socket; it lingers up to the send timeout on close (so a scan's last
    messages reach a slow consumer) unless closed with ``linger=0`` after a stop."""
    endpoint = _source_endpoint(args)
    socket = open_socket(
        context, "push", endpoint, hwm=args.hwm, allow_remote=args.allow_remote,
        send_timeout_ms=int(args.send_timeout * 1000), linger_ms=int(args.send_timeout * 1000),
    )
    where = bound_address(socket) if endpoint.bind else endpoint.address
    print(f"sending on {where} ({'bound' if endpoint.bind else 'connected'})", file=sys.stderr)
    return socket


def _consumer_socket(
    context: zmq.Context[zmq.Socket[bytes]], args: argparse.Namespace, max_bytes: int | None,
    *, announce: str | None,
) -> tuple[Any, PeerGate | None]:
    """Open the PULL socket, and with ``--listen`` its peer gate (``--max-peers``,
    ``--allow``: connecting, the socket has one peer, the source); ``announce`` names the
    command in the line that says where it receives (with a ``*`` port resolved, so
    scripts and tests can read it). Close both with :func:`_close_consumer`."""
    policy = PeerPolicy.parse(args.max_peers, args.allow)
    if args.listen:
        endpoint = Endpoint.parse(args.listen, bind=True)
    else:
        if args.allow:
            raise ConfigError("--allow: only with --listen (with --from this socket "
                              "connects to one source and nothing connects to it)")
        endpoint = Endpoint.parse(args.from_address or DEFAULT_SOURCE_ADDRESS, bind=False)
    gate = PeerGate(context, policy) if endpoint.bind else None
    try:
        socket = open_socket(
            context, "pull", endpoint, hwm=args.hwm, allow_remote=args.allow_remote,
            max_message_bytes=max_bytes, prepare=None if gate is None else gate.attach,
        )
    except BaseException:
        if gate is not None:
            gate.close()
        raise
    if announce is not None:
        where = bound_address(socket) if endpoint.bind else endpoint.address
        how = "listening on" if endpoint.bind else "receiving from"
        print(f"{announce}: {how} {where}; Ctrl-C to stop", file=sys.stderr, flush=True)
    return socket, gate


def _close_consumer(socket: Any, gate: PeerGate | None) -> None:
    socket.close()
    if gate is not None:
        gate.close()


def _send_options_from(args: argparse.Namespace) -> SendOptions:
    from streamer.sources.sender import SendOptions

    return SendOptions(
        block=args.block, rate_fps=args.rate, order=args.order, seed=args.order_seed,
        scan_id=args.scan_id, cannot_wait=args.cannot_wait,
    )


def _simulated_scan(args: argparse.Namespace) -> SimulatedScan:
    from streamer.sources.simulate import SimulatedScan, SimulationConfig

    config = SimulationConfig.from_kwargs(
        rows=args.rows, cols=args.cols, projections=args.projections, flats=args.flats,
        darks=args.darks, flats_at=args.flats_at, scan_range_deg=args.scan_range,
        cor_px=args.cor, zinger_rate=args.zingers, dead_columns=args.dead_column,
        hot_columns=args.hot_column, dtype=args.dtype, seed=args.seed,
    )
    return SimulatedScan(config)


# --- commands ----------------------------------------------------------------------------


def _run_demo(args: argparse.Namespace) -> int:
    feed = _open_feed(args)
    try:
        return _demo(args, feed)
    finally:
        if feed is not None:
            feed.close()


def _demo(args: argparse.Namespace, feed: LiveFeed | None) -> int:
    from streamer.demo import run_demo
    from streamer.ingest.report import format_report

    result = run_demo(_simulated_scan(args), _send_options_from(args), args.out, feed=feed)
    print(format_report(result.report))
    print(f"corrected {result.corrected} projections as they arrived (flat/dark, -log)")
    if result.median_abs_error is not None:
        print(f"  median |corrected - phantom line integral| = {result.median_abs_error:.4f}")
    if result.volume_path is not None:
        center = f"{result.center:.2f}" if result.center is not None else "?"
        how = "found by Vo's method" if result.center_method == "vo" else (
            f"set by {result.center_method}")
        print(f"reconstructed {result.report.start['rows']} slices (Fourier-domain FBP, CoR "
              f"{center} {how}): {result.volume_path}")
        if result.volume_error is not None:
            print(f"  relative L2 error against the phantom: {result.volume_error:.3f}")
    print(f"run report: {result.report_path}")
    _hold_feed(feed, args.hold)
    return 0 if result.report.complete else 1


def _run_simulate(args: argparse.Namespace) -> int:
    if args.save is None:
        _source_endpoint(args)  # a bad address is refused before the scan is made
    scan = _simulated_scan(args)
    if args.save is not None:
        from streamer.sources.formats import write_nxtomo

        write_nxtomo(args.save, scan)
        print(f"wrote {scan.layout.frames} frames to {args.save}")
        return 0
    return _stream(scan, args)


def _scan_argument(scan: Path) -> None:
    """Refuse a SCAN that is neither a file, a folder nor a glob that matches files."""
    if scan.exists():
        return
    text = str(scan)
    if glob.has_magic(text):
        if not any(Path(match).is_file() for match in glob.glob(text)):
            raise ConfigError(f"SCAN: no file matches the pattern {text!r}")
        return
    raise ConfigError(f"SCAN: no such file or folder: {scan}")


def _run_replay(args: argparse.Namespace) -> int:
    _scan_argument(args.scan)
    _source_endpoint(args)
    from streamer.sources.capture import is_capture, replay_capture

    if args.scan.is_file() and is_capture(args.scan):
        with zmq.Context() as context, _stop_on_signal() as stop:
            socket = _source_socket(context, args)
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

    reader = open_scan(args.scan, _load_options_from(args))
    try:
        return _stream(reader, args)
    finally:
        reader.close()


def _stream(reader: Any, args: argparse.Namespace) -> int:
    from streamer.sources.sender import send_scan

    layout = reader.layout
    print(
        f"scan: {layout.frames} frames ({layout.projections} projections, {layout.flats} flats, "
        f"{layout.darks} darks) of {layout.rows}x{layout.cols} {layout.dtype_name}",
        file=sys.stderr,
    )
    with zmq.Context() as context, _stop_on_signal() as stop:
        socket = _source_socket(context, args)
        progress = Progress(sys.stderr, "sending", quiet=args.quiet)
        summary = None
        try:
            summary = send_scan(socket, reader, _send_options_from(args), stop=stop,
                                on_progress=progress.update)
        finally:
            progress.close()
            # Stopped: do not wait (up to --send-timeout) for queued messages to go.
            socket.close(linger=0 if summary is None or summary.stopped else None)
    if summary.stopped:
        told = ("an abort was sent" if summary.abort_sent else
                "no consumer was told: none took messages")
        print(f"STOPPED scan {summary.scan_id} after {summary.frames_sent} of "
              f"{summary.frames} frames (interrupted; {told})")
        return 130
    state = "ABORTED" if summary.aborted else "sent"
    print(
        f"{state} scan {summary.scan_id}: {summary.frames_sent} frames, "
        f"{summary.bytes_sent / 1e6:.1f} MB in {summary.seconds:.2f} s"
    )
    if summary.frames_dropped:
        ranges = ", ".join(f"{a}-{b - 1}" for a, b in summary.dropped_ranges[:10])
        more = " …" if len(summary.dropped_ranges) > 10 else ""
        print(f"DROPPED {summary.frames_dropped} frames (--cannot-wait: the consumer was "
              f"behind): {ranges}{more}")
    return 1 if summary.aborted else 0


def _load_options_from(args: argparse.Namespace) -> LoadOptions:
    """The stored-scan options shared by ``replay`` and ``recon``."""
    from streamer.sources.formats import LoadOptions

    return LoadOptions(
        format=args.format, data_path=args.data_path, image_key_path=args.image_key_path,
        angles_path=args.angles_path, darks=tuple(args.darks), flats=tuple(args.flats),
        rows=args.rows, angles=args.angles, normalised=args.normalised, counts=args.counts,
        scale=args.scale,
    )


def _ingest_settings(args: argparse.Namespace) -> tuple[Limits, IngestSettings]:
    """Limits and ingest settings from the options shared by ``ingest`` and ``run``."""
    from streamer.ingest.service import IngestSettings

    try:
        limits = Limits(
            max_header_bytes=args.max_header_bytes, max_frame_bytes=args.max_frame_bytes,
            max_message_bytes=args.max_message_bytes,
            max_metadata_bytes=args.max_metadata_bytes,
            max_frames_per_message=args.max_frames_per_message,
        )
        return limits, IngestSettings(limits=limits, idle_timeout_s=args.idle_timeout)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _receiving(progress: Progress) -> Callable[[Any], None]:
    """An ingest ``on_event`` that shows frames received for the open scan."""
    from streamer.ingest.state import FramesAccepted, ScanOpened

    received = 0

    def watch(event: Any) -> None:
        nonlocal received
        if isinstance(event, ScanOpened):
            received = 0
        elif isinstance(event, FramesAccepted):
            received += int(event.accepted.sum())
            progress.update(received, event.start.frames, f"scan {event.start.scan}")

    return watch


def _feed_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("live feed (watch with tomo-streamer view)")
    group.add_argument("--feed", default=None, metavar="ADDR",
                       help="publish previews, slices and counters on a ZeroMQ PUB socket "
                       "bound here, e.g. tcp://127.0.0.1:5600 (port *: any free one)")
    group.add_argument("--control", default=None, metavar="ADDR",
                       help="with --feed: bind the control socket (CoR sweep, set the CoR, "
                       "slices) here (default: the feed's own, printed when it starts)")
    group.add_argument("--preview-rows", type=_rows_list, default=None, metavar="R,R,...",
                       help="detector rows of the preview (default: 3 spread over the frame)")
    group.add_argument("--feed-token", default=None, metavar="TOKEN",
                       help="require this token in control requests; needed when --control "
                       "is not loopback (default: $TOMO_STREAMER_FEED_TOKEN)")
    group.add_argument("--feed-allow-remote", action="store_true",
                       help="allow binding --feed/--control on a non-loopback address")


def _rows_list(text: str) -> tuple[int, ...]:
    try:
        rows = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected R,R,... (integers), got {text!r}") from None
    if not 1 <= len(rows) <= 16 or min(rows) < 0:
        raise argparse.ArgumentTypeError(f"expected 1 to 16 rows >= 0, got {text!r}")
    return rows


def _open_feed(args: argparse.Namespace) -> LiveFeed | None:
    """The live feed asked for with ``--feed`` (its addresses printed), or ``None``."""
    if args.feed is None:
        if args.control is not None:
            raise ConfigError("--control: the control socket belongs to a feed; give --feed too")
        return None
    from streamer.feed import DEFAULT_FEED_ADDRESS, FeedSettings, LiveFeed

    token = args.feed_token or os.environ.get("TOMO_STREAMER_FEED_TOKEN") or None
    feed = LiveFeed(FeedSettings(
        address=args.feed, control=args.control or DEFAULT_FEED_ADDRESS,
        allow_remote=args.feed_allow_remote, token=token, preview_rows=args.preview_rows,
    ))
    print(f"feed: publishing on {feed.address}, control on {feed.control_address}; watch with "
          f"tomo-streamer view --feed {feed.address} --control {feed.control_address}",
          file=sys.stderr, flush=True)
    return feed


def _hold_feed(feed: LiveFeed | None, seconds: float) -> None:
    """Keep the feed up ``seconds`` after the scan (viewers can still ask for slices)."""
    if feed is None or not seconds > 0:
        return
    print(f"feed: held for {seconds:g} s (Ctrl-C to stop)", file=sys.stderr, flush=True)
    with _stop_on_signal() as stop:
        stop.wait(seconds)


def _run_view(args: argparse.Namespace) -> int:
    from streamer.viewer.server import ViewerSettings, serve

    token = args.feed_token or os.environ.get("TOMO_STREAMER_FEED_TOKEN") or None
    settings = ViewerSettings(feed=args.feed, control=args.control, host=args.host,
                              port=args.port, allow_remote=args.allow_remote, token=token,
                              allowed_hosts=tuple(args.allowed_host))
    try:
        serve(settings, announce=lambda url: print(f"view: serving {url}; Ctrl-C to stop",
                                                   file=sys.stderr, flush=True))
    except OSError as error:  # the port is taken, the host is not this machine's, …
        from streamer.sinks.disk import os_reason

        raise TransportError(
            f"view: cannot serve on {args.host}:{args.port}: {os_reason(error)} (another "
            "server on that port? pick a free one with --port, or --port 0 for any)"
        ) from None
    return 0


def _device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                        help="gpu: every device-ready stage runs with backend cupy, blocks "
                        "also sized from free device memory (refused without a CUDA device)")


def _device_bytes(device: str) -> int | None:
    """Usable bytes of this process's CUDA device for ``--device gpu`` (``None`` for cpu);
    refused in one line where there is no device."""
    if device != "gpu":
        return None
    from stages.backends.device import detect_device, device_budget_bytes
    from stages.backends.xp import GPU_EXTRA_HINT, gpu_available

    info = detect_device() if gpu_available() else None
    if info is None:
        raise ConfigError("--device gpu: expected a usable CUDA device, got none (cupy is "
                          f"absent or cupy.is_available() is False; {GPU_EXTRA_HINT}); use "
                          "--device cpu")
    return device_budget_bytes(info.free_bytes)


def _budget(memory_gib: float | None) -> int | None:
    if memory_gib is None:
        return None
    if not memory_gib > 0:
        raise ConfigError(f"--memory: expected GiB > 0, got {memory_gib}")
    return int(memory_gib * 2**30)


def _run_run(args: argparse.Namespace) -> int:
    _resolve_pipeline(args, "PIPELINE")
    from streamer.ingest.service import IngestService
    from streamer.live import LiveReconstruction
    from streamer.recon import ReconSettings, center_source, pipeline_for
    from streamer.sinks.disk import check_writable

    check_writable(args.out, folder=True, what="--out")  # before any scan is received
    if args.report_dir is not None:
        check_writable(args.report_dir, folder=True, what="--report-dir")
    if launched_with_ranks() > 1:
        return _run_run_ranks(args)
    settings_for_pipeline = ReconSettings(output=args.out, pipeline=args.pipeline,
                                          center=args.center, device=args.device,
                                          device_bytes=_device_bytes(args.device))
    steps, text = pipeline_for(settings_for_pipeline, "flat_dark")
    limits, settings = _ingest_settings(args)
    report_dir = args.report_dir or args.out
    config = {"address": args.listen or args.from_address or DEFAULT_SOURCE_ADDRESS,
              "pipeline": str(args.pipeline), "limits": limits.__dict__}
    incomplete = 0

    def on_output(output: ScanOutput) -> None:
        nonlocal incomplete
        incomplete += not output.complete
        if output.path is not None:
            state = "complete" if output.complete else "INCOMPLETE"
            error = f": {output.error}" if output.error else ""
            repaired = f", {output.repaired} pixel values repaired" if output.repaired else ""
            doubt = ", CoR UNCERTAIN" if output.center_warnings else ""
            print(f"  volume: {output.path} ({output.slices} slices, CoR "
                  f"{output.center:.2f}, {state}{doubt}{repaired}){error}", flush=True)
            if output.latency is not None:
                print(f"  {output.latency}", flush=True)
            for warning in output.center_warnings:
                print(f"  warning: CoR {output.center:.2f}: {warning}", flush=True)
        else:
            print(f"  volume: none for scan {output.scan}: {output.error}", flush=True)

    live = LiveReconstruction(steps, text, args.out,
                              output_format=_output_format(args, None),
                              center_source=center_source(args.center),
                              block_frames=args.block, block_sinograms=args.sinogram_block,
                              memory_bytes=_budget(args.memory), on_output=on_output,
                              log=_log(args.quiet), background=True,
                              device_bytes=settings_for_pipeline.device_bytes)
    with zmq.Context() as context, _stop_on_signal() as stop:
        live.stop = stop  # Ctrl-C/SIGTERM also stops a reconstruction between blocks
        socket, gate = _consumer_socket(context, args,
                                        limits.max_message_bytes + limits.max_header_bytes,
                                        announce="run")
        feed = live.feed = _open_feed(args)
        service: IngestService

        progress = Progress(sys.stderr, "receiving", quiet=args.quiet)
        watch = _receiving(progress)

        def on_event(event: Any) -> None:
            watch(event)
            live.on_event(event)

        def on_report(report: Any) -> None:
            progress.close()
            _print_and_write_report(report, service.state.between_scans, config, report_dir)

        service = IngestService(socket, settings, drain=live.drain, on_report=on_report,
                                on_event=on_event, gate=gate, log=_log(False))
        if feed is not None:
            feed.watch(service.state)
        try:
            service.run(max_scans=args.scans or None, stop=stop)
        finally:
            live.wait()  # the last reconstruction (stopped between blocks on a signal)
            _close_consumer(socket, gate)
            if feed is not None:
                feed.close()
    return 1 if incomplete else 0


def _print_and_write_report(report: ScanReport, between_scans: Rejections | None,
                            config: dict[str, Any], report_dir: Path) -> None:
    """The service's end of a scan: the accounting on stdout, the JSON report on disk (a
    full or read-only disk is reported, never allowed to stop the service)."""
    from streamer.ingest.report import format_report, report_document, write_report
    from streamer.sinks.disk import os_reason

    document = report_document(report, config=config, between_scans=between_scans)
    print(format_report(report))
    try:
        print(f"  report: {write_report(document, report_dir)}", flush=True)
    except OSError as error:
        print(f"  report: not written to {report_dir}: {os_reason(error)}", flush=True)


def _run_recon(args: argparse.Namespace) -> int:
    _scan_argument(args.scan)
    _resolve_pipeline(args, "--pipeline")

    from stages.registry import REGISTRY
    from streamer.pipeline.config import load_pipeline
    from streamer.pipeline.httomo_loader import with_loader
    from streamer.recon import ReconSettings
    from streamer.sinks.disk import check_writable

    # The output is written after the whole scan is read: check it can be, first.
    output_format = _output_format(args, args.output)
    folder = output_format == "tiff"
    check_writable(args.output, folder=folder, what="-o/--output")
    if not folder and args.output.exists() and not args.overwrite:
        raise SinkError(f"{args.output}: -o/--output: expected a new file, got an existing "
                        "one (pass --overwrite to replace it)")
    options = _load_options_from(args)
    if args.pipeline is not None:  # an HTTomo loader entry fills what the options leave
        options = with_loader(options, load_pipeline(args.pipeline, REGISTRY).loader)
    settings = ReconSettings(
        output=args.output, pipeline=args.pipeline, center=args.center,
        first_row=options.rows[0] if options.rows else 0, block_frames=args.block,
        block_sinograms=args.sinogram_block, output_format=output_format,
        overwrite=args.overwrite, memory_bytes=_budget(args.memory),
        device=args.device, device_bytes=_device_bytes(args.device),
    )
    if launched_with_ranks() > 1:
        return _run_recon_ranks(args, options, settings)
    sweep = (load_pipeline(args.pipeline, REGISTRY).variants()
             if args.pipeline is not None else [("", ())])
    if len(sweep) > 1 or sweep[0][0]:  # one output per sweep value, named by it
        return max(_recon_one(args, options, replace(
            settings, sweep_value=label, output=_sweep_output(args.output, label)))
            for label, _ in sweep)
    return _recon_one(args, options, settings)


def _sweep_output(output: Path, label: str) -> Path:
    """``out.h5`` → ``out_center=80.5.h5`` (a TIFF folder gets the suffix too)."""
    safe = "".join(c if c.isalnum() or c in "=.-_" else "_" for c in label)
    return output.with_name(f"{output.stem}_{safe}{output.suffix}")


def _recon_one(args: argparse.Namespace, options: LoadOptions,
               settings: ReconSettings) -> int:
    if settings.output_format != "tiff" and settings.output.exists() and not args.overwrite:
        raise SinkError(f"{settings.output}: -o/--output: expected a new file, got an "
                        "existing one (pass --overwrite to replace it)")
    from streamer.center_check import check_center
    from streamer.recon import pipeline_for, run_recon
    from streamer.sources.formats import open_scan

    log = _log(args.quiet)
    with open_scan(args.scan, options) as reader:
        layout = reader.layout
        # A fixed CoR off the detector is refused before a frame is read.
        check_center(pipeline_for(settings, layout.normalisation)[0], layout.cols,
                     f"{args.scan}")
        log(f"scan: {layout.projections} projections of {layout.rows}x{layout.cols}, "
            f"{layout.flats} flats, {layout.darks} darks ({layout.normalisation})")
        progress = Progress(sys.stderr, "reading", quiet=args.quiet)
        try:
            result = run_recon(reader, settings, log=log, on_read=progress.update)
        except StageError as error:  # say which scan the data problem is in
            raise StageError(f"{args.scan}: {error}") from None
        finally:
            progress.close()
    for warning in result.center_warnings:
        print(f"warning: CoR {result.center:.2f}: {warning}", file=sys.stderr)
    state = "complete" if result.complete else "INCOMPLETE"
    if result.center_warnings:
        state += ", CoR UNCERTAIN"
    sure = ("" if result.center_confidence is None
            else f", confidence {result.center_confidence:.2f}")
    print(f"wrote {result.slices} slices to {result.output} ({state}) in {result.seconds:.1f} s; "
          f"CoR {result.center:.2f} ({result.center_method}{sure})")
    repairs = result.repairs
    if repairs.total:
        print(f"  repaired {repairs.total} pixel values ({100 * repairs.fraction:.3f} % of the "
              f"projections: {repairs.describe()})")
    if result.images is not None:
        print(f"save_to_images: {result.images[1]} TIFFs in {result.images[0]}")
    return 0 if result.complete else 1


def _run_check(args: argparse.Namespace) -> int:
    """Validate a pipeline and print what ``recon``/``run`` will run: its stages, the
    reconstruction they append when it has none, and the memory plan of the whole."""
    _resolve_pipeline(args, "PIPELINE")
    from stages.registry import REGISTRY
    from streamer.pipeline.config import load_pipeline
    from streamer.pipeline.plan import default_budget_bytes, plan_blocks
    from streamer.pipeline.streaming import streaming_kind
    from streamer.recon import ReconSettings, pipeline_for

    pipeline = load_pipeline(args.pipeline, REGISTRY)
    if args.projections < 1:
        raise ConfigError(f"--projections: expected at least 1, got {args.projections}")
    budget = _budget(args.memory) or default_budget_bytes()
    rows, cols = args.frame
    device = None if args.device is None else _planned_device(args.device)
    steps, _text = pipeline_for(ReconSettings(output=Path(), pipeline=args.pipeline,
                                              device="cpu" if device is None else "gpu"),
                                "flat_dark")
    appended = len(steps) - len(pipeline.steps)
    plans = plan_blocks(steps, rows=rows, cols=cols, angles=args.projections,
                        dtype=np.dtype(args.dtype), budget_bytes=budget)
    device_lines = ([] if device is None else  # refused here, before any output
                    _device_plan_lines(steps, device, rows=rows, cols=cols,
                                       angles=args.projections, dtype=np.dtype(args.dtype)))
    extra = f" (+{appended} appended by recon/run)" if appended else ""
    print(f"{args.pipeline}: valid, {len(pipeline.steps)} stages{extra}")
    for number, step in enumerate(steps, 1):
        params = ", ".join(f"{key}={value!r}" for key, value in dict(step.params).items())
        print(f"  {number}. {step.name:<30s} {step.spec.pattern.value:<10s} {step.backend:<8s} "
              f"{params}")
    if appended:
        print(f"  note: the pipeline has no reconstruction stage: recon and run append "
              f"{', '.join(step.name for step in steps[-appended:])} (shown above)")
    for note in pipeline.notes:
        print(f"  note: {note}")
    if pipeline.sweep is not None:
        variants = pipeline.variants()  # validates every value
        print(f"  sweep: {pipeline.sweep.where}: {len(variants)} variants, one output each: "
              f"{', '.join(label for label, _ in variants)}")
    print(streaming_kind(steps).describe())
    print(f"memory plan: {args.projections} projections of {rows}x{cols} {args.dtype}, "
          f"budget {budget / 2**30:.1f} GiB")
    for plan in plans:
        print(f"  {plan.describe()}")
    if device_lines:
        print("\n".join(device_lines))
    return 0


def _planned_device(text: str) -> Any:
    """``check --device``: the device detected by cupy (``auto``) or one of a stated size."""
    from stages.backends.device import detect_device, stated_device

    if text == "auto":
        info = detect_device()
        if info is None:
            raise ConfigError("--device auto: expected a CUDA device detected by cupy, got "
                              "none; state its size instead, e.g. --device 80")
        return info
    try:
        size = float(text)
    except ValueError:
        raise ConfigError(f"--device: expected a size in GiB or 'auto', got {text!r}") from None
    return stated_device(size)


def _device_plan_lines(steps: Any, device: Any, *, rows: int, cols: int, angles: int,
                       dtype: np.dtype[Any]) -> list[str]:
    from stages.backends.device import DEVICE_HEADROOM, device_budget_bytes
    from streamer.pipeline.plan import on_device, plan_device_blocks

    usable = device_budget_bytes(device.free_bytes)
    plans = plan_device_blocks(steps, rows=rows, cols=cols, angles=angles, dtype=dtype,
                               device_bytes=usable)
    lines = [f"device plan ({device.describe()}; usable {usable / 2**30:.1f} GiB after "
             f"{DEVICE_HEADROOM:.0%} headroom, one device per rank):"]
    lines += [f"  {plan.describe()}" for plan in plans]
    host = [step.name for step in steps if not on_device(step)]
    if not plans:
        lines.append("  no stage runs on the device (none is device-ready or has a GPU "
                     "backend)")
    if host:
        lines.append(f"  on the host (not device-ready): {', '.join(host)}")
    return lines


def _resolve_pipeline(args: argparse.Namespace, what: str) -> None:
    """Replace ``args.pipeline`` (a path or a shipped pipeline's name) by its file, before
    anything else is done; a note says when a shipped one stands in for a missing path."""
    if args.pipeline is None:
        return
    args.pipeline, note = pipeline_file(args.pipeline, what)
    if note is not None:
        print(f"note: {note}", file=sys.stderr, flush=True)


def _log(quiet: bool) -> Callable[[str], None]:
    """Where ``recon``/``run`` send their lines (stderr). ``--quiet`` keeps warnings and
    drops the informational ``scan:`` and ``plan:`` lines."""

    def log(line: str) -> None:
        informational = line.startswith(("scan: ", "plan: ")) or ": plan: " in line
        if not (quiet and informational):
            print(line, file=sys.stderr, flush=True)

    return log


def _run_record(args: argparse.Namespace) -> int:
    from streamer.sources.capture import record

    with zmq.Context() as context, _stop_on_signal() as stop:
        socket, gate = _consumer_socket(context, args, None, announce="record")
        try:
            summary = record(
                socket, args.output, source=args.listen or args.from_address or
                DEFAULT_SOURCE_ADDRESS, scans=args.scans or None,
                idle_timeout_s=args.idle_timeout, stop=stop,
            )
        finally:
            _close_consumer(socket, gate)
    print(
        f"recorded {summary.messages} messages ({summary.bytes / 1e6:.1f} MB, "
        f"{summary.scans_closed} scans ended) to {summary.path}"
    )
    return 0


def _run_ingest(args: argparse.Namespace) -> int:
    limits, settings = _ingest_settings(args)
    from streamer.ingest.cluster import ClusterIngest
    from streamer.ingest.report import format_report, report_document, write_report
    from streamer.ingest.service import IngestService

    config = {
        "address": args.listen or args.from_address or DEFAULT_SOURCE_ADDRESS,
        "bind": bool(args.listen),
        "idle_timeout_s": args.idle_timeout,
        "limits": limits.__dict__,
    }
    cluster = None
    if launched_with_ranks() > 1:
        if args.listen:
            raise ConfigError(
                "--listen: with several MPI ranks every rank connects to the source; "
                "use --from ADDR (the source binds)"
            )
        cluster = ClusterIngest(RankLink.world(), args.idle_timeout, limits)
        config["ranks"] = cluster.link.size
    speaks = cluster is None or cluster.is_coordinator
    incomplete = 0
    with zmq.Context() as context, _stop_on_signal() as stop:
        socket, gate = _consumer_socket(
            context, args, limits.max_message_bytes + limits.max_header_bytes,
            announce="ingest" if speaks and not args.quiet else None,
        )
        service: IngestService

        def on_report(report: Any) -> None:
            nonlocal incomplete
            progress.close()
            incomplete += not report.complete
            document = report_document(
                report, config=config, between_scans=service.state.between_scans
            )
            path = write_report(document, args.report_dir)
            if args.json:
                print(json.dumps(document, indent=2), flush=True)
            elif not args.quiet:
                print(format_report(report))
                print(f"  report: {path}", flush=True)

        progress = Progress(sys.stderr, "receiving", quiet=args.quiet or not speaks)
        service = IngestService(socket, settings, on_report=on_report, cluster=cluster,
                                on_event=_receiving(progress), gate=gate, log=_log(False))
        if cluster is not None and speaks and not args.quiet:
            print(f"ingest: {cluster.link.size} MPI ranks pull from the source",
                  file=sys.stderr, flush=True)
        try:
            service.run(max_scans=args.scans or None, stop=stop)
        finally:
            _close_consumer(socket, gate)
    return 1 if incomplete else 0


def _run_run_ranks(args: argparse.Namespace) -> int:
    """``mpiexec -n R tomo-streamer run``: every rank pulls, reslices, reconstructs its
    band into its own part file; rank 0 reports and writes each scan's master file."""
    if args.listen:
        raise ConfigError(
            "--listen: with several MPI ranks every rank connects to the source; "
            "use --from ADDR (the source binds)"
        )
    from streamer.ingest.cluster import ClusterIngest
    from streamer.ingest.service import IngestService
    from streamer.live_ranks import RankedReconstruction
    from streamer.recon import ReconSettings, center_source, pipeline_for

    if args.feed:
        raise ConfigError("--feed: the live feed runs on one rank for now (with several "
                          "MPI ranks each sees only a share of the projections)")
    if _output_format(args, None) != "hdf5":
        raise ConfigError("--tiff/--output-format: with several MPI ranks the output is "
                          "HDF5 (a part file per rank and a master file); run one rank "
                          "for TIFF")
    settings_for_pipeline = ReconSettings(output=args.out, pipeline=args.pipeline,
                                          center=args.center)
    steps, text = pipeline_for(settings_for_pipeline, "flat_dark")
    limits, settings = _ingest_settings(args)
    link = RankLink.world()
    control, band_link = link.duplicate(), link.duplicate()
    cluster = ClusterIngest(link, args.idle_timeout, limits)
    speaks = cluster.is_coordinator
    report_dir = args.report_dir or args.out
    config = {"address": args.from_address or DEFAULT_SOURCE_ADDRESS,
              "pipeline": str(args.pipeline), "limits": limits.__dict__, "ranks": link.size}
    incomplete = 0

    def on_output(output: ScanOutput) -> None:
        nonlocal incomplete
        incomplete += not output.complete
        if output.path is not None:
            state = "complete" if output.complete else "INCOMPLETE"
            center = "?" if output.center is None else f"{output.center:.2f}"
            repaired = f", {output.repaired} pixel values repaired" if output.repaired else ""
            print(f"  volume: {output.path} ({output.slices} slices from {link.size} "
                  f"ranks, CoR {center}, {state}{repaired})", flush=True)
        if output.error:
            print(f"  volume: {output.scan}: {output.error}", flush=True)

    log = _log(args.quiet)
    ranked = RankedReconstruction(steps, text, args.out, control, band_link,
                                  block_frames=args.block, block_sinograms=args.sinogram_block,
                                  memory_bytes=_budget(args.memory), on_output=on_output,
                                  center_source=center_source(args.center), log=log)
    with zmq.Context() as context, _stop_on_signal() as stop:
        ranked.stop = stop  # Ctrl-C/SIGTERM: every rank stops between blocks
        socket, gate = _consumer_socket(context, args,
                                        limits.max_message_bytes + limits.max_header_bytes,
                                        announce="run" if speaks else None)
        service: IngestService
        progress = Progress(sys.stderr, "receiving", quiet=args.quiet or not speaks)
        watch = _receiving(progress)

        def on_event(event: Any) -> None:
            watch(event)
            ranked.on_event(event)

        def on_report(report: Any) -> None:
            progress.close()
            _print_and_write_report(report, service.state.between_scans, config, report_dir)

        service = IngestService(socket, settings, drain=ranked.drain, on_report=on_report,
                                on_event=on_event, cluster=cluster, gate=gate, log=log)
        if speaks and not args.quiet:
            print(f"run: {link.size} MPI ranks pull from the source and reconstruct "
                  "a band of rows each", file=sys.stderr, flush=True)
        # One line per rank, so that a launcher's report of a dead process (by pid) can
        # be read as a rank.
        print(f"run: rank {link.rank} is pid {os.getpid()}", file=sys.stderr, flush=True)
        try:
            service.run(max_scans=args.scans or None, stop=stop)
        finally:
            _close_consumer(socket, gate)
    return 1 if incomplete else 0


def _run_recon_ranks(args: argparse.Namespace, options: LoadOptions,
                     settings: ReconSettings) -> int:
    """``mpiexec -n R tomo-streamer recon``: each rank reads and corrects a share of the
    projections and reconstructs a band of rows; rank 0 writes the master file."""
    from streamer.center_check import check_center
    from streamer.live_ranks import recon_on_ranks
    from streamer.recon import pipeline_for
    from streamer.sources.formats import open_scan

    link = RankLink.world()
    began = time.perf_counter()
    with open_scan(args.scan, options) as reader:
        layout = reader.layout
        check_center(pipeline_for(settings, layout.normalisation)[0], layout.cols,
                     f"{args.scan}")  # every rank: all stop before reading
        if link.rank == 0 and not args.quiet:
            print(f"scan: {layout.projections} projections of {layout.rows}x{layout.cols}, "
                  f"{layout.flats} flats, {layout.darks} darks ({layout.normalisation}); "
                  f"{link.size} MPI ranks", file=sys.stderr, flush=True)
        output = recon_on_ranks(reader, settings, link,
                                log=_log(args.quiet))
    if output is None:  # not rank 0
        return 0
    if output.path is None:
        raise StreamerError(f"recon: nothing was written: {output.error}")
    state = "complete" if output.complete else "INCOMPLETE"
    center = "?" if output.center is None else f"{output.center:.2f}"
    print(f"wrote {output.slices} slices to {output.path} ({state}, {link.size} part files) "
          f"in {time.perf_counter() - began:.1f} s; CoR {center}")
    if output.repaired:
        print(f"  repaired {output.repaired} pixel values (see the report in the output)")
    if output.error:
        print(f"  errors: {output.error}", file=sys.stderr)
    return 0 if output.complete else 1


if __name__ == "__main__":
    sys.exit(main())
