"""The options several commands share (option groups added to a sub-parser) and the
argparse types that check one option's text; no command logic here."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streamer.ingest.peers import DEFAULT_MAX_PEERS
from streamer.wire.protocol import Limits
from streamer.wire.transport import DEFAULT_SOURCE_ADDRESS


def add_command(commands: Any, example: str, name: str, help_text: str,
                handler: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    """Add sub-command ``name`` with its help, its example and the function that runs it."""
    sub: argparse.ArgumentParser = commands.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=example,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub.set_defaults(handler=handler)
    return sub


def add_simulation_options(parser: argparse.ArgumentParser, *, projections: int) -> None:
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


def add_send_options(parser: argparse.ArgumentParser) -> None:
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
    group.add_argument("--scan-id", type=parse_scan_id, default=None,
                       help="the scan's id (letters, digits and ._:@+-; default: a new one)")
    group.add_argument("--sample", type=parse_sample_name, default=None, metavar="NAME",
                       help="the sample's name, sent in start's metadata: a consumer carries "
                            "the CoR of the sample's previous scan to this one (replay: "
                            "default the file's NeXus /entry/sample/name or data-exchange "
                            "/measurement/sample/name)")


def add_source_endpoint_options(parser: argparse.ArgumentParser) -> None:
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


def add_consumer_endpoint_options(parser: argparse.ArgumentParser) -> None:
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


def add_format_options(parser: argparse.ArgumentParser, tiff_help: str) -> None:
    """``--output-format NAME`` (a sink of streamer.sinks.registry; ``--format`` is the
    input scan's format) and ``--tiff``, its alias."""
    parser.add_argument("--output-format", dest="output_format", default=None,
                        metavar="hdf5|tiff|zarr",
                        help="output format (default: from the output's suffix, else hdf5)")
    parser.add_argument("--tiff", dest="output_format", action="store_const", const="tiff",
                        help=tiff_help)


def chosen_output_format(args: argparse.Namespace, output: Path | None) -> str:
    """The sink that writes ``output``: ``--output-format``/``--tiff``, else its suffix."""
    from streamer.sinks.registry import format_for

    return format_for(output, args.output_format)


def add_limit_options(parser: argparse.ArgumentParser) -> None:
    defaults = Limits()
    group = parser.add_argument_group("limits (bytes)")
    group.add_argument("--max-header-bytes", type=int, default=defaults.max_header_bytes)
    group.add_argument("--max-frame-bytes", type=int, default=defaults.max_frame_bytes)
    group.add_argument("--max-message-bytes", type=int, default=defaults.max_message_bytes)
    group.add_argument("--max-metadata-bytes", type=int, default=defaults.max_metadata_bytes)
    group.add_argument("--max-frames-per-message", type=int,
                       default=defaults.max_frames_per_message)


def add_load_options(parser: argparse.ArgumentParser) -> None:
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
    group.add_argument("--rows", type=parse_row_range, default=None, metavar="A:B",
                       help="detector rows A..B-1 only (0-based)")
    group.add_argument("--angles", type=parse_angle_range, default=None, metavar="START,STOP,COUNT",
                       help="angles in degrees, endpoint included, for files without angles")
    counts = group.add_mutually_exclusive_group()
    counts.add_argument("--normalised", action="store_true",
                        help="data are already -log attenuation: skip normalisation")
    counts.add_argument("--counts", action="store_true",
                        help="data are detector counts even where they look like "
                        "attenuation (a single sinogram without flats is checked)")
    group.add_argument("--scale", type=float, default=None,
                       help="multiply pixel values by this factor (output float32)")


def add_feed_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("live feed (watch with tomo-streamer view)")
    group.add_argument("--feed", default=None, metavar="ADDR",
                       help="publish previews, slices and counters on a ZeroMQ PUB socket "
                       "bound here, e.g. tcp://127.0.0.1:5600 (port *: any free one)")
    group.add_argument("--control", default=None, metavar="ADDR",
                       help="with --feed: bind the control socket (CoR sweep, set the CoR, "
                       "slices) here (default: the feed's own, printed when it starts)")
    group.add_argument("--preview-rows", type=parse_rows_list, default=None, metavar="R,R,...",
                       help="detector rows of the preview (default: 3 spread over the frame)")
    group.add_argument("--feed-token", default=None, metavar="TOKEN",
                       help="require this token in control requests; needed when --control "
                       "is not loopback (default: $TOMO_STREAMER_FEED_TOKEN)")
    group.add_argument("--feed-allow-remote", action="store_true",
                       help="allow binding --feed/--control on a non-loopback address")


def add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                        help="gpu: every device-ready stage runs with backend cupy, blocks "
                        "also sized from free device memory (refused without a CUDA device)")


def parse_scan_id(text: str) -> str:
    import re

    from streamer.wire.protocol import SCAN_ID_PATTERN

    if len(text) > 128 or not re.fullmatch(SCAN_ID_PATTERN, text):
        raise argparse.ArgumentTypeError(
            "expected 1-128 characters, a letter or digit first, then letters, digits "
            f"and ._:@+- only, got {text!r}")
    return text


def parse_sample_name(text: str) -> str:
    from streamer.sources.sample_name import sample_name_problem

    problem = sample_name_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def parse_row_range(text: str) -> tuple[int, int]:
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


def parse_center(text: str) -> float | str:
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


def parse_tolerance(text: str) -> float:
    """A tolerance in detector pixels: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected pixels (a number >= 0), got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected pixels (a finite number >= 0), got {text!r}")
    return value


def parse_frame_shape(text: str) -> tuple[int, int]:
    rows, sep, cols = text.lower().partition("x")
    if not sep or not rows.isdigit() or not cols.isdigit() or int(rows) < 1 or int(cols) < 1:
        raise argparse.ArgumentTypeError(f"expected ROWSxCOLS (positive integers), got {text!r}")
    return int(rows), int(cols)


def parse_angle_range(text: str) -> tuple[float, float, int]:
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


def parse_rows_list(text: str) -> tuple[int, ...]:
    try:
        rows = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected R,R,... (integers), got {text!r}") from None
    if not 1 <= len(rows) <= 16 or min(rows) < 0:
        raise argparse.ArgumentTypeError(f"expected 1 to 16 rows >= 0, got {text!r}")
    return rows
