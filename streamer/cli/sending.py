"""Sending a scan to a consumer (``simulate``, ``replay``; ``demo`` builds its scan here
too): the PUSH socket, the send options and the progress of one scan."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

import zmq

from streamer.cli.shared import stop_on_signal
from streamer.run.progress import Progress
from streamer.wire.transport import DEFAULT_SOURCE_ADDRESS, Endpoint, bound_address, open_socket

if TYPE_CHECKING:
    from streamer.sources.sender import SendOptions
    from streamer.sources.simulate import SimulatedScan


def source_endpoint(args: argparse.Namespace) -> Endpoint:
    """Where ``simulate``/``replay`` send (checked before any scan is read)."""
    if args.connect:
        return Endpoint.parse(args.connect, bind=False)
    return Endpoint.parse(args.bind or DEFAULT_SOURCE_ADDRESS, bind=True)


def source_socket(context: zmq.Context[zmq.Socket[bytes]], args: argparse.Namespace) -> Any:
    """The PUSH socket; it lingers up to the send timeout on close (so a scan's last
    messages reach a slow consumer) unless closed with ``linger=0`` after a stop."""
    endpoint = source_endpoint(args)
    socket = open_socket(
        context, "push", endpoint, hwm=args.hwm, allow_remote=args.allow_remote,
        send_timeout_ms=int(args.send_timeout * 1000), linger_ms=int(args.send_timeout * 1000),
    )
    where = bound_address(socket) if endpoint.bind else endpoint.address
    print(f"sending on {where} ({'bound' if endpoint.bind else 'connected'})", file=sys.stderr)
    return socket


def send_options_from(args: argparse.Namespace) -> SendOptions:
    from streamer.sources.sender import SendOptions

    return SendOptions(
        block=args.block, rate_fps=args.rate, order=args.order, seed=args.order_seed,
        scan_id=args.scan_id, cannot_wait=args.cannot_wait,
        sample=args.sample,  # None: the scan's own (replay: the file's), if it names one
    )


def simulated_scan(args: argparse.Namespace) -> SimulatedScan:
    from streamer.sources.simulate import SimulatedScan, SimulationConfig

    config = SimulationConfig.from_kwargs(
        rows=args.rows, cols=args.cols, projections=args.projections, flats=args.flats,
        darks=args.darks, flats_at=args.flats_at, scan_range_deg=args.scan_range,
        cor_px=args.cor, zinger_rate=args.zingers, dead_columns=args.dead_column,
        hot_columns=args.hot_column, dtype=args.dtype, seed=args.seed,
    )
    return SimulatedScan(config)


def stream_scan(reader: Any, args: argparse.Namespace) -> int:
    from streamer.sources.sender import send_scan

    layout = reader.layout
    print(
        f"scan: {layout.frames} frames ({layout.projections} projections, {layout.flats} flats, "
        f"{layout.darks} darks) of {layout.rows}x{layout.cols} {layout.dtype_name}",
        file=sys.stderr,
    )
    with zmq.Context() as context, stop_on_signal() as stop:
        socket = source_socket(context, args)
        progress = Progress(sys.stderr, "sending", quiet=args.quiet)
        summary = None
        try:
            summary = send_scan(socket, reader, send_options_from(args), stop=stop,
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
